"""The learner's config sections (pydantic; composed into the run config by orchestration)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Unknown keys are errors, named in the message."""

    model_config = ConfigDict(extra="forbid")


class GRPOConfig(Strict):
    """SPEC.md's GRPO settings; defaults are the paper's."""

    group_size: int = Field(8, ge=2, description="G, answers sampled per prompt")
    beta: float = Field(0.04, ge=0, description="KL coefficient (k3 estimator); 0 drops the reference model")
    clip_eps_low: float = Field(0.2, gt=0)
    clip_eps_high: float = Field(0.2, gt=0, description="> clip_eps_low is DAPO's clip-higher")
    ppo_epochs: int = Field(1, ge=1, description="mu: optimizer updates per batch")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    advantage_eps: float = Field(1e-4, gt=0)
    loss_agg: Literal["seq-mean", "token-mean"] = "seq-mean"
    tis_cap: float | None = Field(2.0, gt=0, description="cap of the truncated importance weight engine -> learner "
                                                          "(corrects stale answers, train.max_staleness); null: off")


class LearnerConfig(Strict):
    """DeepSpeed ZeRO-3 learner, one Ray actor per rank."""

    num_ranks: int = Field(2, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    lr: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(0, ge=0, description="optimizer updates over which the learning rate rises linearly "
                                                   "from 0 to lr (DeepSpeed's WarmupLR); 0: lr from the first")
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="linear: after the warm-up the learning rate falls linearly to 0 at the run's last "
                                "optimizer update, train.steps x grpo.ppo_epochs (transformers' "
                                "get_linear_schedule_with_warmup, TRL's default); constant: lr throughout")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(4, ge=1, description="answers per forward on one rank (unless "
                                                       "max_tokens_per_microbatch is set)")
    max_tokens_per_microbatch: int | None = Field(
        None, ge=1, description="pack as many answers (with their prompts) into one forward as this many padded "
                                "tokens hold, instead of micro_batch_size answers; every rank runs as many "
                                "micro-batches as the rank that needs most")
    torch_adam: bool = Field(True, description="torch's AdamW, fused on CUDA (no build at run time); false: "
                                               "DeepSpeed's FusedAdam, JIT-compiled at start-up (needs nvcc of "
                                               "torch's CUDA major version, a compiler and Python headers)")
    param_persistence_threshold: int = Field(
        100_000, ge=0, description="ZeRO-3 keeps params smaller than this unpartitioned (DeepSpeed's default)"
    )
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    sync_backend: Literal["gloo", "nccl"] = "gloo"
    sync_bucket_mb: float | None = Field(
        None, gt=0, description="weights per sync bucket: buckets pipeline (the learner prepares the next, the engine "
                                "copies out the last, while one is in flight). None: by sync_backend, "
                                "SYNC_BUCKET_MB (gloo 8 MB: 2-8 MB measured fastest on CPU, 64 MB was 1.6x slower; "
                                "nccl 512 MB: GPU-to-GPU copies want few large messages)")
    ray_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each rank asks for, e.g. {learner_node: 1} to keep "
                                          "the ranks on nodes started with --resources '{\"learner_node\": 8}'")
    cpus_per_rank: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    freeze_vision: bool = Field(False, description="train the language model only; the vision tower (`model.visual`) "
                                                   "keeps its weights, as in EasyR1's freeze_vision_tower")
    shared_prefix: bool = Field(True, description="each prompt encoded once per micro-batch, its answers packed after "
                                                  "it behind a 4D attention mask (false: one full row per answer)")

    @model_validator(mode="after")
    def _devices_match_backends(self):
        if self.device == "cpu" and "nccl" in (self.dist_backend, self.sync_backend):
            raise ValueError("learner.device=cpu needs dist_backend=gloo and sync_backend=gloo")
        return self

    @property
    def bucket_mb(self) -> float:
        """The sync bucket size in MB: `sync_bucket_mb`, or the backend's default."""
        return self.sync_bucket_mb if self.sync_bucket_mb is not None else SYNC_BUCKET_MB[self.sync_backend]


SYNC_BUCKET_MB = {"gloo": 8.0, "nccl": 512.0}
