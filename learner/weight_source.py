"""The learner's weights as the engines need them: bucketed, named, and straight from the ZeRO-3 partitions.

At a sync every learner rank sends the partitions it holds (no rank gathers the full weights; the engines assemble
them, `common/sync_group.py`). `iter_buckets` / `iter_full` gather full tensors for the few callers that need them
whole (checksums in tests, the final from_pretrained export). Names are the model's `named_parameters()` names, the
same a `from_pretrained` model on the engine side has.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from common.sync_group import ParamMeta, WeightPlan


def full_numel(p: torch.nn.Parameter) -> int:
    """Element count of the whole parameter; ZeRO-3 leaves `numel()` at 0 on a partitioned one."""
    return int(getattr(p, "ds_numel", p.numel()))


def full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    """The parameter's full (unpartitioned) shape: ZeRO-3 keeps it in `ds_shape`."""
    return tuple(getattr(p, "ds_shape", p.shape))


class ZeroWeightSource:
    """Bucketed access to a ZeRO-3 partitioned model's parameters (buckets of one dtype, about `bucket_bytes`)."""

    def __init__(self, model: torch.nn.Module, world_size: int, bucket_bytes: int = 64 << 20):
        self.named = [(n, p) for n, p in model.named_parameters()]
        self.world_size = world_size
        buckets: list[list[ParamMeta]] = []
        self._bucket_params: list[list[torch.nn.Parameter]] = []
        current: list[tuple[str, torch.nn.Parameter]] = []
        size = 0
        for name, p in self.named + [(None, None)]:
            if current and (p is None or size + full_numel(p) * p.element_size() > bucket_bytes
                            or p.dtype != current[0][1].dtype):
                buckets.append([ParamMeta(n, full_shape(q), str(q.dtype).removeprefix("torch.")) for n, q in current])
                self._bucket_params.append([q for _, q in current])
                current, size = [], 0
            if p is not None:
                current.append((name, p))
                size += full_numel(p) * p.element_size()
        self.plan = WeightPlan(buckets, sources=world_size)

    def iter_partitions(self) -> Iterator[torch.Tensor]:
        """This rank's part of each bucket: its ZeRO-3 partitions (`ds_tensor`) of the bucket's parameters, flat
        and in plan order. Local: no communication."""
        for metas, params in zip(self.plan.buckets, self._bucket_params):
            yield torch.cat([self._partition(p, m) for p, m in zip(params, metas)])

    def _partition(self, p: torch.nn.Parameter, meta: ParamMeta) -> torch.Tensor:
        if hasattr(p, "ds_tensor"):
            part = p.ds_tensor.data.view(-1)
            if part.numel() != self.plan.partition_numel(meta):
                raise ValueError(f"{meta.name}: ZeRO-3 partition of {part.numel()} elements, expected "
                                 f"{self.plan.partition_numel(meta)} (ceil({meta.numel} / {self.world_size}))")
            return part
        if self.world_size != 1:
            raise ValueError(f"{meta.name} is not ZeRO-3 partitioned, but there are {self.world_size} learner ranks")
        return p.data.view(-1)

    def iter_buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Each bucket's full tensors, gathered (a collective: every rank iterates together); valid only until the
        next bucket is requested."""
        import deepspeed

        for metas, params in zip(self.plan.buckets, self._bucket_params):
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield [(m.name, p.data.view(m.shape)) for m, p in zip(metas, params)]

    def iter_full(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) for every parameter, gathering bucket by bucket."""
        for bucket in self.iter_buckets():
            yield from bucket
