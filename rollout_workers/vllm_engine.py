"""The vLLM generation engine (GPU): same interface and the same preprocessed prompts as the transformers engine.

Weights arrive over the same torch.distributed sync group as on CPU (NCCL here): a worker extension, reached with
`collective_rpc`, joins the group inside each vLLM worker and hands received tensors to the model's own
`load_weights`, which maps Hugging Face names onto vLLM's fused layout. Tested only where a CUDA GPU and vLLM exist
(tests/rollout_workers/test_vllm_engine.py); CI has neither.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from common.records import EncodedPrompt, Rollout, SamplingParams
from common.sync_group import WeightPlan

WORKER_EXTENSION = "rollout_workers.vllm_engine.WeightSyncExtension"


class VLLMEngine:
    def __init__(self, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.6,
                 max_model_len: int = 4096, seed: int = 0, allowed_tokens: list[str] | None = None):
        from transformers import AutoConfig, GenerationConfig
        from vllm import LLM

        from common.policy import eos_token_ids, resolve_allowed_ids, vision_token_ids

        self.llm = LLM(
            model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
            max_model_len=max_model_len, enable_prefix_caching=True, worker_extension_cls=WORKER_EXTENSION,
            limit_mm_per_prompt={"image": 1},
            # Log-probs after temperature and the allowed-token mask: the policy the learner recomputes.
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()
        cfg = AutoConfig.from_pretrained(model_path)
        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:  # a checkpoint without generation_config.json
            generation = GenerationConfig.from_model_config(cfg)
        self.eos_ids = eos_token_ids(generation, self.tokenizer)
        # Never sample vision placeholders: a large negative bias removes them.
        self.suppressed = {i: -100.0 for i in vision_token_ids(cfg)}
        allowed = resolve_allowed_ids(self.tokenizer, allowed_tokens, self.eos_ids)
        self.allowed_ids = None if allowed is None else allowed.tolist()
        self.version = 0

    def generate(self, requests: list[EncodedPrompt], sampling: SamplingParams) -> list[list[Rollout]]:
        from vllm import SamplingParams as VSampling

        greedy = sampling.temperature <= 0
        params = VSampling(
            n=sampling.n, temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p, top_k=-1 if greedy or sampling.top_k == 0 else sampling.top_k,
            max_tokens=sampling.max_new_tokens, seed=sampling.seed, logprobs=0, logit_bias=self.suppressed,
            skip_special_tokens=False, allowed_token_ids=self.allowed_ids,
        )
        # vLLM expands the image placeholder itself: the prompt text keeps one per image.
        inputs = [{"prompt": r.prompt_text, "multi_modal_data": {"image": Image.fromarray(r.image)}}
                  for r in requests]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        groups = []
        for req, out in zip(requests, outputs):
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs, ids)]
                finish = "stop" if c.finish_reason == "stop" else "length"
                text_ids = ids[:-1] if finish == "stop" and ids and ids[-1] in self.eos_ids else ids
                group.append(Rollout(req.sample_id, list(req.prompt_token_ids), ids,
                                     self.tokenizer.decode(text_ids, skip_special_tokens=False), lps, self.version,
                                     finish))
            groups.append(group)
        return groups

    def policy_version(self) -> int:
        return self.version

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the sync group; with tensor parallelism each worker takes its own rank after `rank`."""
        self.llm.collective_rpc("init_weight_sync", args=(backend, host, port, rank, world_size))

    def receive_weights(self, version: int, plan: WeightPlan) -> int:
        self.llm.collective_rpc("receive_weights", args=(plan,))
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights
        self.version = version
        return version

    def state_checksums(self) -> dict[str, float]:
        return self.llm.collective_rpc("state_checksums")[0]

    def get_parameter(self, name: str) -> np.ndarray:
        return self.llm.collective_rpc("get_parameter", args=(name,))[0]


class WeightSyncExtension:
    """Mixed into each vLLM worker (`worker_extension_cls`); `self.model_runner` is the worker's."""

    def init_weight_sync(self, backend, host, port, rank, world_size):
        from common.sync_group import create_sync_group

        self._sync_group = create_sync_group(backend, host, port, rank, world_size)

    def receive_weights(self, plan):
        import torch

        from common.sync_group import broadcast_from_rank0, torch_dtype, unflatten_bucket

        model = self.model_runner.model
        for bucket in plan:
            flat = torch.empty(sum(m.numel for m in bucket), dtype=torch_dtype(bucket[0].dtype), device="cuda")
            broadcast_from_rank0(self._sync_group, flat).wait()
            model.load_weights(weights=unflatten_bucket(flat, bucket))
        torch.cuda.synchronize()

    def state_checksums(self):
        return {n: float(p.detach().double().sum()) for n, p in self.model_runner.model.named_parameters()}

    def get_parameter(self, name):
        return dict(self.model_runner.model.named_parameters())[name].detach().float().cpu().numpy()
