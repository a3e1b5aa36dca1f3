"""Ray actor shell over a generation engine; the engine itself is a plain object tested in-process."""
from __future__ import annotations

import os

import ray


@ray.remote
class EngineActor:
    """One generation engine. `backend` picks the implementation; both honour the same interface."""

    def __init__(self, backend: str, model_path: str, device: str, dtype: str, num_threads: int | None = None,
                 allowed_tokens: list[str] | None = None, **vllm_kwargs):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if backend == "transformers":
            from rollout_workers.transformers_engine import TransformersEngine

            self.engine = TransformersEngine(model_path, device=device, dtype=dtype, num_threads=num_threads,
                                             allowed_tokens=allowed_tokens)
        elif backend == "vllm":
            from rollout_workers.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model_path, dtype=dtype, allowed_tokens=allowed_tokens, **vllm_kwargs)
        else:
            raise ValueError(f"rollout backend must be 'transformers' or 'vllm', got {backend!r}")

    def generate(self, requests, sampling):
        """The engine's `generate`: one group of `sampling.n` rollouts per request."""
        return self.engine.generate(requests, sampling)

    def policy_version(self) -> int:
        """The weights version the engine holds."""
        return self.engine.policy_version()

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the weight-sync group as `rank`."""
        return self.engine.init_weight_sync(backend, host, port, rank, world_size)

    def receive_weights(self, version: int, plan) -> int:
        """Receive a broadcast of the learner's weights as `version`; returns the version."""
        return self.engine.receive_weights(version, plan)

    def shutdown(self) -> None:
        """Stop the engine (vLLM's engine-core process too) before the actor goes."""
        self.engine.shutdown()

    def pids(self) -> list[int]:
        """This actor's process and its children (vLLM's engine core): what must be gone when it is replaced."""
        import psutil

        me = psutil.Process()
        return [me.pid] + [c.pid for c in me.children(recursive=True)]

    def state_checksums(self) -> dict[str, float]:
        """The engine's per-parameter sums (transformers backend only)."""
        return self.engine.state_checksums()

    def get_parameter(self, name: str):
        """One parameter as numpy (transformers backend only)."""
        return self.engine.get_parameter(name)
