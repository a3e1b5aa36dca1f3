"""A torch.distributed process group outside the default one, for learner rank 0 -> engines weight broadcast.

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
        n = 1
        for s in self.shape:
            n *= s
        return n


WeightPlan = list[list[ParamMeta]]  # buckets, each broadcast as one flat tensor of one dtype


def plan_to_wire(plan: WeightPlan) -> list[list[list]]:
    """The plan as plain lists, the only form that crosses vLLM's msgspec `collective_rpc` serialiser intact."""
    return [[[m.name, list(m.shape), m.dtype] for m in bucket] for bucket in plan]


def plan_from_wire(wire) -> WeightPlan:
    """Inverse of `plan_to_wire` (msgspec may hand back lists where tuples went in)."""
    return [[ParamMeta(str(name), tuple(int(s) for s in shape), str(dtype)) for name, shape, dtype in bucket]
            for bucket in wire]


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


def unflatten_bucket(flat: torch.Tensor, bucket: list[ParamMeta]) -> list[tuple[str, torch.Tensor]]:
    """Split a received flat bucket back into named, shaped views."""
    out, offset = [], 0
    for meta in bucket:
        out.append((meta.name, flat[offset : offset + meta.numel].view(meta.shape)))
        offset += meta.numel
    if offset != flat.numel():
        raise ValueError(f"bucket size mismatch: plan has {offset} elements, received {flat.numel()}")
    return out


def broadcast_from_rank0(group: dist.ProcessGroup, tensor: torch.Tensor):
    """Start broadcasting `tensor` from sync rank 0 (in place on receivers); returns the work handle to wait on."""
    return group.broadcast(tensor, 0)


def send_buckets(group: dist.ProcessGroup, buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> int:
    """Sync rank 0: broadcast each bucket as one flat tensor, flattening the next while one is in flight.
    Returns the bytes sent."""
    pending, nbytes = None, 0
    for bucket in buckets:
        flat = torch.cat([t.reshape(-1) for _, t in bucket])
        if pending is not None:
            pending.wait()
        pending = broadcast_from_rank0(group, flat)
        nbytes += flat.numel() * flat.element_size()
    if pending is not None:
        pending.wait()
    return nbytes


def receive_buckets(group: dist.ProcessGroup, plan: WeightPlan, device) -> Iterator[tuple[str, torch.Tensor]]:
    """Engines: (name, full tensor) for every parameter of `plan`, received bucket by bucket as rank 0 sends."""
    for bucket in plan:
        flat = torch.empty(sum(m.numel for m in bucket), dtype=torch_dtype(bucket[0].dtype), device=device)
        broadcast_from_rank0(group, flat).wait()
        yield from unflatten_bucket(flat, bucket)
