"""The reward service's config section: pool size, timeouts, and each task's reward options (SPEC.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RewardOptions(BaseModel):
    """Options of the task rewards; defaults follow SPEC.md (released code where it and the paper differ)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    box_convention: Literal["qwen25vl", "qwen2vl"] = "qwen25vl"
    iou_power: float = Field(2.0, gt=0, description="grounding answer = IoU^p: 2 in the released code, 1 in the paper")
    l1_normalized: bool = Field(False, description="detection matching L1 in [0,1] image units; false = released pixels")
    size_weights: bool = Field(False, description="detection IoU term weighted 3/2/1 for small/medium/large")
    missing_penalty: bool = Field(True, description="detection -0.5 * (fp_rate + fn_rate), paper Table 6")
    categories: list[str] | None = Field(None, description="detection label set (else the sample's own list)")
    thinking: bool = Field(False, description="answers as <think>...</think><answer>...</answer> with a 0/1 "
                                              "thinking_format reward (off, as in the paper); prompts ask for it")
    max_items: int = Field(
        256, ge=1, description="boxes matched per answer (counting, detection); items beyond it still count as "
                               "predictions (count ratio, precision, false-positive penalty) but are not matched, "
                               "which bounds the Hungarian matching's cost")


class RewardConfig(BaseModel):
    """The reward pool (actors, timeouts, retries) and the task rewards' options."""
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1, description="reward actors in the pool")
    timeout_s: float = Field(120.0, gt=0, description="per scoring call; past it the actor counts as hung: it is "
                                                      "replaced and the call resubmitted")
    max_retries: int = Field(2, ge=0, description="resubmissions of a call whose actor died or hung; after them "
                                                  "its group scores 0, counted in reward/failed_groups")
    cpus_per_worker: float = Field(0.25, gt=0)
    options: RewardOptions = RewardOptions()
