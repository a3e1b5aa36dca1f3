"""Full parameters out of a ZeRO-3 model, gathered in buckets: the one thing weight sync needs from the learner.

On CPU `iter_buckets()` feeds the gloo broadcast to the transformers engines; on GPU `iter_full()` backs vLLM's
`WeightSource` for its NCCL weight transfer. Names are the model's `named_parameters()` names, the same names a
`from_pretrained` model on the engine side has.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from common.sync_group import ParamMeta, WeightPlan


def full_numel(p: torch.nn.Parameter) -> int:
    """Element count of the whole parameter; ZeRO-3 leaves `numel()` at 0 on a partitioned one."""
    return int(getattr(p, "ds_numel", p.numel()))


def full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))


class ZeroWeightSource:
    """Bucketed gathering of a (possibly ZeRO-3 partitioned) model's parameters.

    Every learner rank must iterate together: each bucket's gather is a collective.
    """

    def __init__(self, model: torch.nn.Module, bucket_bytes: int = 256 << 20):
        self.named = [(n, p) for n, p in model.named_parameters()]
        self.plan: WeightPlan = []
        self._bucket_params: list[list[torch.nn.Parameter]] = []
        current: list[tuple[str, torch.nn.Parameter]] = []
        size = 0
        for name, p in self.named:
            nbytes = full_numel(p) * p.element_size()
            if current and (size + nbytes > bucket_bytes or p.dtype != current[0][1].dtype):
                self._close(current)
                current, size = [], 0
            current.append((name, p))
            size += nbytes
        if current:
            self._close(current)

    def _close(self, bucket: list[tuple[str, torch.nn.Parameter]]) -> None:
        self.plan.append([
            ParamMeta(n, full_shape(p), str(p.dtype).removeprefix("torch.")) for n, p in bucket
        ])
        self._bucket_params.append([p for _, p in bucket])

    def metadata(self) -> list[ParamMeta]:
        return [m for bucket in self.plan for m in bucket]

    def iter_buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Yield each bucket's full tensors; they are valid only until the next item is requested."""
        import deepspeed

        for metas, params in zip(self.plan, self._bucket_params):
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield [(m.name, p.data.view(m.shape)) for m, p in zip(metas, params)]

    def iter_full(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, full tensor) for every parameter, gathering bucket by bucket."""
        for bucket in self.iter_buckets():
            yield from bucket
