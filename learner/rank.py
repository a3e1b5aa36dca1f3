"""One DeepSpeed ZeRO-3 learner rank: GRPO step, reference log-probs, weight broadcast, checkpoints.

A plain object (the Ray actor in `learner/actor.py` is a thin shell), so it can be driven in-process too.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import time
from pathlib import Path

import torch

from common.devices import require_cuda
from common.memory import return_large_blocks_to_os
from common.progress import quiet_libraries
from common.policy import eos_token_ids, model_policy
from common.records import TrainShard
from common.sync_group import create_sync_group, send_partitions
from learner.config import GRPOConfig, LearnerConfig
from learner.grpo import grpo_loss
from learner.sequences import (collate, collate_shared, plan_microbatches, response_logprobs,
                              shared_prefix_logprobs)
from learner.weight_source import ZeroWeightSource


def deepspeed_config(cfg: LearnerConfig, with_optimizer: bool) -> dict:
    """The DeepSpeed config for the policy (with optimizer) or the frozen reference model. Micro-batches vary in
    number from step to step (a token budget): `train_step` marks DeepSpeed's accumulation boundary itself, so
    DeepSpeed's own count is 1 and its micro-batch size nominal. A linear `lr_schedule` is not in it: `LearnerRank`
    hands DeepSpeed transformers' scheduler (`linear_schedule`)."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        # bf16 weights, fp32 gradient accumulation: GRPO's +/- advantage terms largely cancel across micro-batches,
        # which bf16's 8-bit mantissa would round away (without this ZeRO-3 accumulates in the model's dtype).
        "data_types": {"grad_accum_dtype": "fp32"},
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": cfg.param_persistence_threshold,
            "overlap_comm": cfg.device == "cuda",
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }
    if with_optimizer:
        ds["gradient_clipping"] = cfg.grad_clip
        params = {"lr": cfg.lr, "betas": list(cfg.betas), "eps": 1e-8, "weight_decay": cfg.weight_decay,
                  "torch_adam": cfg.torch_adam}
        if cfg.torch_adam and cfg.device == "cuda":
            params["fused"] = True  # torch's own fused kernel: DeepSpeed passes it to torch.optim.AdamW
        ds["optimizer"] = {"type": "AdamW", "params": params}
        if cfg.warmup_steps and cfg.lr_schedule == "constant":
            ds["scheduler"] = {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr,
                                                              "warmup_num_steps": cfg.warmup_steps,
                                                              "warmup_type": "linear"}}
    return ds


def linear_schedule(cfg: LearnerConfig, total_updates: int | None):
    """For `lr_schedule: linear`, the function DeepSpeed calls with its optimizer to build the scheduler: the learning
    rate rises over `warmup_steps` updates, then falls linearly to 0 at update `total_updates` (transformers'
    get_linear_schedule_with_warmup, TRL's default). None for a constant schedule.

    Raises ValueError: a linear schedule without `total_updates` (the driver passes train.steps x ppo_epochs)."""
    if cfg.lr_schedule == "constant":
        return None
    if not total_updates or total_updates <= cfg.warmup_steps:
        raise ValueError(f"learner.lr_schedule=linear needs more optimizer updates than learner.warmup_steps="
                         f"{cfg.warmup_steps}; the run has {total_updates}")
    from transformers import get_linear_schedule_with_warmup

    return lambda optimizer: get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_updates)


def plain_cuda_arches(arch_list: str) -> str:
    """TORCH_CUDA_ARCH_LIST without architecture variants ("9.0a" -> "9.0"). DeepSpeed 0.19's JIT op builder reads
    each entry as numbers and fails on a variant (deepspeedai/DeepSpeed#7589; seen on an H200 whose image sets
    "9.0a"), and its fused Adam uses no variant-only instruction."""
    return re.sub(r"(\d+\.\d+)[a-z]\b", r"\1", arch_list)


class LearnerRank:
    """Policy (and reference) model of one rank of the ZeRO-3 group."""

    def __init__(self, model_path: str, cfg: LearnerConfig, grpo: GRPOConfig, rank: int, world_size: int,
                 master_addr: str, master_port: int, sampling: dict, allowed_tokens: list[str] | None = None,
                 total_updates: int | None = None):
        """`sampling` (temperature, top_k, top_p) and `allowed_tokens` are the engines': with them the learner
        computes log-probs under the very policy the engines sample from (common/policy.py). `total_updates`: the
        run's optimizer updates, where a linear `lr_schedule` reaches 0."""
        if cfg.device == "cuda":
            require_cuda("learner.device")
        import deepspeed
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.integrations import HfDeepSpeedConfig

        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
            LOCAL_RANK="0" if cfg.device == "cuda" else str(rank),  # Ray gives each GPU rank its own device 0
        )
        if cfg.device == "cpu":
            # On CPU DeepSpeed JIT-compiles a shared-memory all-reduce when it initialises (~90 s on a fresh machine,
            # and a run killed mid-build leaves a file lock that blocks every later build forever). Only
            # DeepSpeed-inference's all_reduce uses it; ZeRO training communicates through torch.distributed.
            # (importlib: `import deepspeed.comm.torch as m` would bind torch itself, re-exported by deepspeed.comm)
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        elif "TORCH_CUDA_ARCH_LIST" in os.environ and not cfg.torch_adam:
            os.environ["TORCH_CUDA_ARCH_LIST"] = plain_cuda_arches(os.environ["TORCH_CUDA_ARCH_LIST"])
        quiet_libraries()
        deepspeed.init_distributed(dist_backend=cfg.dist_backend)
        return_large_blocks_to_os()
        self.cfg, self.grpo, self.rank, self.world_size = cfg, grpo, rank, world_size
        self.device = torch.device("cuda", 0) if cfg.device == "cuda" else torch.device("cpu")
        dtype = getattr(torch, cfg.dtype)

        schedule = linear_schedule(cfg, total_updates)

        def load(with_optimizer: bool):
            ds_config = deepspeed_config(cfg, with_optimizer)
            # Alive during from_pretrained, this makes transformers build the model partitioned (zero.Init):
            # a 3B model never sits whole in one rank's memory.
            hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841
            model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
            if cfg.freeze_vision:  # before the optimizer is built: frozen weights get no gradient and no state
                model.model.visual.requires_grad_(False)
            if with_optimizer and cfg.gradient_checkpointing:
                model.gradient_checkpointing_enable()
            params = [p for p in model.parameters() if p.requires_grad] if with_optimizer else None
            engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config,
                                              lr_scheduler=schedule if with_optimizer else None)
            return engine, hf_ds

        self.engine, self._hf_ds = load(with_optimizer=True)
        self.ref_engine = None
        if grpo.beta > 0:
            self.ref_engine, self._hf_ds_ref = load(with_optimizer=False)
            self.ref_engine.eval()
        self.model_config = self.engine.module.config
        tokenizer = AutoProcessor.from_pretrained(model_path).tokenizer
        self.pad_id = tokenizer.pad_token_id
        eos = eos_token_ids(self.engine.module.generation_config, tokenizer)
        self.policy = model_policy(tokenizer, self.model_config, eos, allowed_tokens, **sampling)
        self.weights = ZeroWeightSource(self.engine.module, world_size,
                                        bucket_bytes=int(cfg.bucket_mb * (1 << 20)))
        self._sync_group = None
        self.updates = 0

    # ---- training ---------------------------------------------------------------------------------------------
    def train_step(self, shard: TrainShard) -> dict[str, float]:
        """`ppo_epochs` optimizer updates on this rank's shard; returns this rank's metrics. The shard is cut into
        micro-batches by token budget (`learner.max_tokens_per_microbatch`) or answer count; gradients accumulate
        over them and DeepSpeed steps once per epoch (its accumulation boundary set here, not counted by it)."""
        t0 = time.perf_counter()
        micro = self.plan(shard)
        scale = self.world_size  # DeepSpeed averages gradients over ranks; the loss normalises the rest
        count = shard.num_tokens_global if self.grpo.loss_agg == "token-mean" else shard.num_items_global
        normalizer = count / scale
        dtype = self.engine.module.dtype
        if self.cfg.shared_prefix:
            batches = [collate_shared(items, shard.prompts, self.engine.module, self.pad_id, self.device, dtype)
                       for items in micro]

            def logprobs(model, batch):
                return shared_prefix_logprobs(model, batch, self.policy)
        else:
            batches = [collate(items, shard.prompts, self.model_config, self.pad_id, self.device, dtype)
                       for items in micro]

            def logprobs(model, batch):
                return response_logprobs(model, batch, self.policy)
        old_lp: list[torch.Tensor] = []
        ref_lp: list[torch.Tensor | None] = []
        sums = dict(loss=0.0, kl=0.0, clip_frac=0.0, ratio=0.0, is_weight=0.0, is_truncated_frac=0.0)
        is_weight_max = 0.0
        diff_sum, diff_max, n_tok = 0.0, 0.0, 0.0
        grad_norm = float("nan")
        self.engine.train()
        for epoch in range(self.grpo.ppo_epochs):
            for i, batch in enumerate(batches):
                self.engine.set_gradient_accumulation_boundary(i == len(batches) - 1)  # before the forward
                lp = logprobs(self.engine, batch)
                if epoch == 0:
                    # Before the first update the policy is the one that sampled: these are the old log-probs,
                    # and their gap to the engine's is the proof that weight sync happened.
                    old_lp.append(lp.detach())
                    # where, not * mask: a padded position may hold -inf, and inf * 0 is NaN
                    gap = torch.where(batch.mask.bool(), (lp.detach() - batch.engine_logprobs).abs(), 0.0)
                    diff_sum += float(gap.sum())
                    diff_max = max(diff_max, float(gap.max()) if gap.numel() else 0.0)
                    n_tok += float(batch.mask.sum())
                    if self.ref_engine is not None:
                        with torch.no_grad():
                            ref_lp.append(logprobs(self.ref_engine, batch))
                    else:
                        ref_lp.append(None)
                loss, stats = grpo_loss(
                    lp, old_lp[i], batch.advantages, batch.mask, ref_logprobs=ref_lp[i], beta=self.grpo.beta,
                    behavior_logprobs=batch.engine_logprobs, tis_cap=self.grpo.tis_cap,
                    clip_eps_low=self.grpo.clip_eps_low, clip_eps_high=self.grpo.clip_eps_high,
                    loss_agg=self.grpo.loss_agg, normalizer=normalizer,
                )
                self.engine.backward(loss)
                sums["loss"] += float(loss.detach()) / self.grpo.ppo_epochs
                for k in sums.keys() & stats.keys():
                    sums[k] += float(stats[k]) / (len(batches) * self.grpo.ppo_epochs)
                is_weight_max = max(is_weight_max, float(stats.get("is_weight_max", 0.0)))
            self.engine.step()
            grad_norm = _to_float(self.engine.get_global_grad_norm())
            self.updates += 1
        return {
            "train/loss": sums["loss"],
            "train/kl": sums["kl"],
            "train/clip_frac": sums["clip_frac"],
            "train/ratio": sums["ratio"],
            "train/is_weight": sums["is_weight"],
            "train/is_weight_max": is_weight_max,
            "train/is_truncated_frac": sums["is_truncated_frac"],
            "train/grad_norm": grad_norm,
            "train/lr": float(self.engine.get_lr()[0]),
            "train/masked_vision_tokens": float(sum(b.num_masked_vision_tokens for b in batches)),
            "train/micro_batches": float(len(batches)),
            "sampling/logprob_diff_sum": diff_sum,
            "sampling/logprob_diff_max": diff_max,
            "sampling/num_tokens": n_tok,
            "time/train_rank_s": time.perf_counter() - t0,
        }

    def plan(self, shard: TrainShard) -> list[list]:
        """This rank's micro-batches (`plan_microbatches`), as many as on the rank that needs most: ZeRO-3's
        forward gathers each layer's weights with every rank, so all ranks must run the same number of them."""
        kw = dict(shared_prefix=self.cfg.shared_prefix, max_tokens=self.cfg.max_tokens_per_microbatch,
                  max_items=self.cfg.micro_batch_size)
        micro = plan_microbatches(shard.items, shard.prompts, **kw)
        if self.world_size > 1:
            import deepspeed.comm as dist

            most = torch.tensor([len(micro)], dtype=torch.long, device=self.device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            if int(most) != len(micro):
                micro = plan_microbatches(shard.items, shard.prompts, count=int(most), **kw)
        return micro

    # ---- weight sync ------------------------------------------------------------------------------------------
    def weight_plan(self):
        """The names, shapes and buckets of the weights this rank sends (`WeightPlan`)."""
        return self.weights.plan

    def init_weight_sync(self, host: str, port: int, world_size: int) -> None:
        """Join the sync group: learner rank r is its rank r (rank 0 hosts it), engine i its rank num_ranks + i."""
        self._sync_group = create_sync_group(self.cfg.sync_backend, host, port, self.rank, world_size)
        self._engine_ranks = range(self.world_size, world_size)

    def sync_weights(self) -> dict[str, float]:
        """Send this rank's ZeRO-3 partitions of every bucket to every engine (no gather on the learner side)."""
        t0 = time.perf_counter()
        if self._sync_group is None:
            raise RuntimeError("sync_weights called before init_weight_sync")
        sent = send_partitions(self._sync_group, self.weights.iter_partitions(), self._engine_ranks)
        return {"sync/bytes": float(self.weights.plan.nbytes), "sync/sent_bytes": float(sent),
                "sync/rank_s": time.perf_counter() - t0}

    # ---- inspection and checkpoints ---------------------------------------------------------------------------
    def state_checksums(self) -> dict[str, float]:
        """Sum of each full parameter (float64), gathered; collective: call on every rank."""
        out = {}
        for bucket in self.weights.iter_buckets():
            out.update({n: float(t.double().sum()) for n, t in bucket})
        return out

    def get_parameter(self, name: str):
        """One full parameter as numpy; collective: call on every rank."""
        for n, t in self.weights.iter_full():
            if n == name:
                return t.detach().float().cpu().numpy().copy()
        raise KeyError(name)

    def save(self, directory: str) -> None:
        """This rank's part of a resumable checkpoint, collective: DeepSpeed's ZeRO-3 state (partitioned weights,
        optimizer, LR schedule) and the rank's RNG states. Every rank must see `directory` (shared storage)."""
        self.engine.save_checkpoint(directory, tag="zero3", client_state={"updates": self.updates},
                                    save_latest=False)
        torch.save({"torch": torch.get_rng_state(), "updates": self.updates},
                   Path(directory) / f"rng_rank{self.rank}.pt")

    def load(self, directory: str) -> None:
        """Restore what `save` wrote (same number of ranks), collective."""
        path, _ = self.engine.load_checkpoint(directory, tag="zero3")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory!r}")
        extra = torch.load(Path(directory) / f"rng_rank{self.rank}.pt", weights_only=False)
        torch.set_rng_state(extra["torch"])
        self.updates = int(extra["updates"])

    def export_hf(self, directory: str, processor_path: str) -> None:
        """A plain `from_pretrained`-loadable checkpoint of the current policy (rank 0 writes), collective."""
        state = {n: t.detach().cpu().clone() for n, t in self.weights.iter_full()} if self.rank == 0 else None
        if self.rank != 0:
            for _ in self.weights.iter_full():
                pass
            return
        from transformers import AutoProcessor

        Path(directory).mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(directory, state_dict=state)
        AutoProcessor.from_pretrained(processor_path).save_pretrained(directory)


def _to_float(x) -> float:
    if x is None:
        return float("nan")
    v = float(x.item() if hasattr(x, "item") else x)
    return v if math.isfinite(v) else float("nan")
