"""A torch.distributed process group outside the default one, for the learner ranks -> engines weight transfer.

DeepSpeed owns each learner process's default group, and the engines are other processes, so the sync group is
built directly from a TCPStore (gloo on CPU, NCCL on GPU), the same code for both backends.
"""
from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParamMeta:
    """One parameter's full (un-partitioned) name, shape and dtype, as the engines must receive it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32", "bfloat16"

    @property
    def numel(self) -> int:
        """Elements of the full tensor."""
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class WeightPlan:
    """What the engines receive at every sync: buckets of parameters, each sent by every one of the `sources`
    learner ranks as the concatenation of its ZeRO-3 partitions. Rank r holds elements [r * ps, (r + 1) * ps) of
    each flattened parameter, ps = ceil(numel / sources), the last partition zero-padded (DeepSpeed's layout), so no
    rank ever gathers the full weights: the engine assembles them."""

    buckets: list[list[ParamMeta]]
    sources: int

    def partition_numel(self, meta: ParamMeta) -> int:
        """Elements of one rank's ZeRO-3 partition: ceil(numel / sources), the last one zero-padded."""
        return -(-meta.numel // self.sources)

    @property
    def nbytes(self) -> int:
        """Bytes of every full tensor in the plan."""
        return sum(m.numel * torch_dtype(m.dtype).itemsize for b in self.buckets for m in b)


def plan_to_wire(plan: WeightPlan) -> list:
    """The plan as plain lists, the only form that crosses vLLM's msgspec `collective_rpc` serialiser intact."""
    return [plan.sources, [[[m.name, list(m.shape), m.dtype] for m in bucket] for bucket in plan.buckets]]


def plan_from_wire(wire) -> WeightPlan:
    """Inverse of `plan_to_wire` (msgspec may hand back lists where tuples went in)."""
    sources, buckets = wire
    return WeightPlan([[ParamMeta(str(name), tuple(int(s) for s in shape), str(dtype)) for name, shape, dtype in b]
                       for b in buckets], int(sources))


def torch_dtype(name: str) -> torch.dtype:
    """'bfloat16' -> torch.bfloat16, raising on anything that is not a torch dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def free_port() -> tuple[str, int]:
    """An address on this node and a port free right now, for the sync group's store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    try:
        import ray

        host = ray.util.get_node_ip_address()
    except Exception:  # outside Ray (unit tests): loopback
        host = "127.0.0.1"
    return host, port


def create_sync_group(
    backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float = 600.0
) -> dist.ProcessGroup:
    """Join (rank 0: host) the sync group; blocks until all `world_size` members have joined."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    prefixed = dist.PrefixStore("weight_sync", store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, timeout)
    raise ValueError(f"weight sync backend must be 'gloo' or 'nccl', got {backend!r}")


def _host_only(group: dist.ProcessGroup) -> bool:
    """gloo sends host memory only: a CUDA learner or engine on a gloo sync group (one GPU shared by both, or a CPU
    fallback engine) stages its buckets through a CPU copy."""
    return isinstance(group, dist.ProcessGroupGloo)


def send_partitions(group: dist.ProcessGroup, flats: Iterable[torch.Tensor], destinations: range) -> int:
    """A learner rank: send each bucket's flat partitions to every engine, preparing the next bucket while up to
    two are in flight. Returns the bytes sent."""
    in_flight: list[list] = []
    nbytes = 0
    for tag, flat in enumerate(flats):
        if _host_only(group):
            flat = flat.cpu()
        in_flight.append([flat, *(group.send([flat], dst, tag) for dst in destinations)])
        nbytes += flat.numel() * flat.element_size() * len(destinations)
        if len(in_flight) > 2:
            for work in in_flight.pop(0)[1:]:
                work.wait()
    for _, *works in in_flight:
        for work in works:
            work.wait()
    return nbytes


def receive_partitions(group: dist.ProcessGroup, plan: WeightPlan,
                       device) -> Iterator[tuple[ParamMeta, list[torch.Tensor]]]:
    """An engine: every parameter of `plan` as (meta, its partitions from learner rank 0, 1, ...), views into the
    receive buffers, bucket by bucket as the learner ranks send them. The next bucket's receives are posted before
    the caller copies out the current one, so the transfer and the copy overlap. The last partition may run past
    the parameter's end (DeepSpeed's zero padding)."""

    if _host_only(group):
        device = "cpu"

    def post(tag: int):
        bucket = plan.buckets[tag]
        sizes = [plan.partition_numel(m) for m in bucket]
        parts = [torch.empty(sum(sizes), dtype=torch_dtype(bucket[0].dtype), device=device)
                 for _ in range(plan.sources)]
        return bucket, sizes, parts, [group.recv([part], src, tag) for src, part in enumerate(parts)]

    pending = post(0) if plan.buckets else None
    for tag in range(len(plan.buckets)):
        bucket, sizes, parts, works = pending
        for work in works:
            work.wait()
        pending = post(tag + 1) if tag + 1 < len(plan.buckets) else None
        offset = 0
        for meta, size in zip(bucket, sizes):
            yield meta, [part[offset : offset + size] for part in parts]
            offset += size


def receive_buckets(group: dist.ProcessGroup, plan: WeightPlan, device) -> Iterator[tuple[str, torch.Tensor]]:
    """An engine: (name, full tensor) for every parameter of `plan`, assembled from the learner ranks' partitions."""
    for meta, pieces in receive_partitions(group, plan, device):
        full = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        yield meta.name, full[: meta.numel].view(meta.shape)
