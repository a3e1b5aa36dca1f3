"""The rollout engines' config section; sampling defaults are the paper's (SPEC.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RolloutConfig(BaseModel):
    """The engines' section: backend, devices, and the paper's sampling (SPEC.md) as defaults."""
    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers", "vllm"] = "transformers"
    num_engines: int = Field(1, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0, description="0 disables top-k")
    max_new_tokens: int = Field(768, ge=1)
    allowed_tokens: list[str] | None = Field(
        None, description="an answer vocabulary: the policy samples only these tokens (plus end of turn), and "
                          "engine and learner compute log-probs over them alone"
    )
    cpus_per_engine: float = Field(1.0, gt=0)
    num_threads: int | None = Field(None, ge=1, description="CPU threads of a transformers engine; None: every core "
                                                            "while learners idle (strictly on-policy steps), else "
                                                            "cpus_per_engine")
    calls_per_engine: int = Field(1, ge=1, description="generate calls an engine's share of a step is split into; "
                                                       "1 decodes it as one batch (fastest), and groups still stream "
                                                       "to the reward pool engine by engine; 2+ lets scoring of the "
                                                       "first call's groups overlap the rest (costly rewards)")
    generate_timeout_s: float = Field(1800.0, gt=0, description="an engine that returns nothing for this long is "
                                                                 "taken for hung and restarted")
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1, description="vLLM only")

    def policy_sampling(self) -> dict[str, float]:
        """The sampling settings that are part of the policy (common/policy.py): the learner needs them too."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
