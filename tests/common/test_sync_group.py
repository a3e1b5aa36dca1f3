"""The weight-transfer protocol: learner ranks send their ZeRO-3 partitions, an engine assembles exact full tensors."""
import threading

import torch

from common.sync_group import (ParamMeta, WeightPlan, create_sync_group, free_port, plan_from_wire, plan_to_wire,
                               receive_buckets, receive_partitions, send_partitions)


def _partition(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """DeepSpeed's layout: rank r holds [r * ps, (r + 1) * ps) of the flattened tensor, zero-padded at the end."""
    ps = -(-t.numel() // world)
    padded = torch.zeros(ps * world, dtype=t.dtype)
    padded[: t.numel()] = t.reshape(-1)
    return padded[rank * ps : (rank + 1) * ps]


def test_two_learner_ranks_to_two_engines_exactly():
    g = torch.Generator().manual_seed(0)
    params = {"a.weight": torch.randn(5, 3, generator=g), "a.bias": torch.randn(7, generator=g),
              "b.weight": torch.randn(4, 4, generator=g), "c": torch.randn(1, generator=g)}
    metas = [ParamMeta(n, tuple(t.shape), "float32") for n, t in params.items()]
    plan = WeightPlan([metas[:2], metas[2:]], sources=2)
    assert plan_from_wire(plan_to_wire(plan)) == plan  # what crosses vLLM's serialiser comes back the same
    host, port = free_port()
    results, sent = {}, {}

    def learner(rank):
        group = create_sync_group("gloo", host, port, rank, 4)
        flats = [torch.cat([_partition(params[m.name], rank, 2) for m in bucket]) for bucket in plan.buckets]
        sent[rank] = send_partitions(group, flats, range(2, 4))

    def engine(rank):
        group = create_sync_group("gloo", host, port, rank, 4)
        if rank == 2:
            results[rank] = dict(receive_buckets(group, plan, "cpu"))
        else:  # the transformers engine's way: partitions copied into place
            out = {m.name: torch.empty(m.shape) for b in plan.buckets for m in b}
            for meta, pieces in receive_partitions(group, plan, "cpu"):
                flat, offset = out[meta.name].view(-1), 0
                for piece in pieces:
                    n = min(piece.numel(), meta.numel - offset)
                    flat[offset : offset + n] = piece[:n]
                    offset += n
            results[rank] = out

    threads = [threading.Thread(target=learner, args=(r,)) for r in (0, 1)]
    threads += [threading.Thread(target=engine, args=(r,)) for r in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for rank in (2, 3):
        assert results[rank].keys() == params.keys()
        for name, tensor in params.items():
            assert torch.equal(results[rank][name], tensor), (rank, name)
    # Each rank sent its partitions (ceil(numel / 2) per parameter) to both engines.
    assert sent[0] == sent[1] == sum(-(-t.numel() // 2) * 4 for t in params.values()) * 2
    assert plan.nbytes == sum(t.numel() * 4 for t in params.values())
