"""The reward service's config section."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1, description="reward actors in the pool")
    timeout_s: float = Field(120.0, gt=0, description="per scoring call; a group past it scores 0 and is counted")
    cpus_per_worker: float = Field(0.25, gt=0)
