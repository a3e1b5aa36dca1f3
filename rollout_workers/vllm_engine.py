"""The vLLM generation engine: same interface, the same preprocessed prompts and the same policy as the
transformers engine.

Policy (common/policy.py): vLLM runs with `logprobs_mode="processed_logprobs"`, so the log-prob it reports is taken
after the answer-vocabulary mask (`allowed_token_ids`), the -100 `logit_bias` on suppressed ids, the temperature and
top-k/top-p, exactly the steps `processed_logits` applies in the learner.

Weights arrive over the learner's sync group (gloo on CPU, NCCL on GPU): a worker extension, reached with
`collective_rpc`, joins the group inside each vLLM worker and streams the received buckets into vLLM's in-place
reload (`reload_weights(weights_iterator=..., is_checkpoint_format=True)`), which maps Hugging Face names onto
vLLM's fused and repacked layout; `model.load_weights` alone fails where vLLM repacks weights (its CPU kernels).
Only plain lists cross `collective_rpc` (msgspec). After every update the prefix, encoder and multimodal caches are
reset: KV blocks and vision embeddings computed with the old weights must not be reused.

Two faults of vLLM's CPU build (0.32), worked around here and covered by `make test-vllm`: a prefill split over
two scheduler steps rewinds the request's seeded generator with `Generator.set_offset`, which torch's CPU generator
lacks ("CPU Generator does not use offset": the engine dies), so on CPU prefills are not chunked; and the CPU build
packs each output layer's weight for its GEMM at load time, which an in-place reload refreshes only for layers that
receive weights, so an output layer tied to the input embedding (Qwen2.5-VL-3B) kept the old weights: log-probs
0.31 nats per token away from the learner's after one update (`refresh_tied_output_layers`).
"""
from __future__ import annotations

from PIL import Image

from common.records import EncodedPrompt, Rollout, SamplingParams
from common.sync_group import WeightPlan, plan_to_wire

WORKER_EXTENSION = "rollout_workers.vllm_engine.WeightSyncExtension"


class VLLMEngine:
    """vLLM generating G answers per prompt under the project's policy (`processed_logprobs`, the suppressed ids as
    logit bias, no generation defaults from the checkpoint), receiving weights through a worker extension."""
    def __init__(self, model_path: str, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.6,
                 max_model_len: int = 4096, seed: int = 0, allowed_tokens: list[str] | None = None):
        from transformers import AutoConfig, GenerationConfig
        from vllm import LLM
        from vllm.platforms import current_platform

        from common.policy import eos_token_ids, model_policy

        self.llm = LLM(
            model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
            max_model_len=max_model_len, enable_prefix_caching=True, worker_extension_cls=WORKER_EXTENSION,
            limit_mm_per_prompt={"image": 1, "video": 0},
            logprobs_mode="processed_logprobs",
            # Sampling is ours alone: no defaults from the checkpoint's generation_config (Qwen's repetition
            # penalty, top_k=1 ...) may change the policy behind the learner's back.
            generation_config="vllm",
            # CPU: a split prefill rewinds the seeded generator, which torch's CPU generator cannot (module doc)
            enable_chunked_prefill=not current_platform.is_cpu(),
        )
        self.tokenizer = self.llm.get_tokenizer()
        cfg = AutoConfig.from_pretrained(model_path)
        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:  # a checkpoint without generation_config.json
            generation = GenerationConfig.from_model_config(cfg)
        self.eos_ids = eos_token_ids(generation, self.tokenizer)
        self.policy = model_policy(self.tokenizer, cfg, self.eos_ids, allowed_tokens)
        self.version = 0

    def _sampling_params(self, sampling: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VSampling

        greedy = sampling.temperature <= 0
        return VSampling(
            n=sampling.n, temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else sampling.top_k,
            max_tokens=sampling.max_new_tokens, seed=seed, logprobs=0,
            logit_bias={i: -100.0 for i in self.policy.suppressed_ids} or None,
            allowed_token_ids=list(self.policy.allowed_ids) if self.policy.allowed_ids else None,
            stop_token_ids=sorted(self.eos_ids), skip_special_tokens=False,
        )

    def generate(self, requests: list[EncodedPrompt], sampling: SamplingParams) -> list[list[Rollout]]:
        """For each prompt, `sampling.n` answers; request i is seeded `sampling.seed + i * n` (vLLM gives its
        j-th answer seed + j)."""
        params = [self._sampling_params(sampling, None if sampling.seed is None else sampling.seed + i * sampling.n)
                  for i in range(len(requests))]
        # vLLM expands the image placeholder itself: the prompt text keeps one per image. The image is already
        # resized (common/vision.py); pixel bounds equal to its own size keep vLLM's processor from resizing it
        # again, so vLLM sees the grid the learner and the reward use.
        inputs = [{"prompt": r.prompt_text, "multi_modal_data": {"image": Image.fromarray(r.image)},
                   "mm_processor_kwargs": {"min_pixels": r.image.shape[0] * r.image.shape[1],
                                           "max_pixels": r.image.shape[0] * r.image.shape[1]}}
                  for r in requests]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        groups = []
        for req, out in zip(requests, outputs):
            if list(out.prompt_token_ids) != list(req.prompt_token_ids):
                raise ValueError(f"vLLM prompted sample {req.sample_id!r} with {len(out.prompt_token_ids)} tokens "
                                 f"where the learner has {len(req.prompt_token_ids)}: its processor saw another "
                                 f"image grid than the {req.image.shape[1]} x {req.image.shape[0]} image sent")
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs, ids)]
                finish = "stop" if ids and ids[-1] in self.eos_ids else "length"
                text_ids = ids[:-1] if finish == "stop" else ids
                group.append(Rollout(req.sample_id, list(req.prompt_token_ids), ids,
                                     self.tokenizer.decode(text_ids, skip_special_tokens=False), lps, self.version,
                                     finish))
            groups.append(group)
        return groups

    def policy_version(self) -> int:
        """The weights version this engine holds."""
        return self.version

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the sync group as `rank` (one vLLM worker per engine; tensor parallelism is not supported yet)."""
        if self.llm.llm_engine.vllm_config.parallel_config.world_size != 1:
            raise NotImplementedError("weight sync into a tensor/pipeline-parallel vLLM engine is not implemented")
        self.llm.collective_rpc("init_weight_sync", args=(backend, host, port, rank, world_size))

    def receive_weights(self, version: int, plan: WeightPlan) -> int:
        """Receive a broadcast into every worker, then drop the prefix and encoder caches of the old weights."""
        self.llm.collective_rpc("receive_weights", args=(plan_to_wire(plan),))
        self.llm.reset_prefix_cache()  # KV blocks computed with the old weights
        self.llm.llm_engine.reset_encoder_cache()  # vision embeddings computed with the old weights
        self.llm.reset_mm_cache()  # keeps the front end's and the workers' multimodal caches in step
        self.version = version
        return version

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def state_checksums(self) -> dict[str, float]:
        """Not available: vLLM repacks weights (NotImplementedError)."""
        raise NotImplementedError("vLLM repacks weights (sums read 0 on CPU): verify a sync by log-probs instead")

    def get_parameter(self, name: str):
        """Not available: vLLM repacks weights (NotImplementedError)."""
        raise NotImplementedError("vLLM repacks weights: verify a sync by log-probs instead")


class WeightSyncExtension:
    """Mixed into each vLLM worker (`worker_extension_cls`); `self` is the worker (`self.device`,
    `self.reload_weights`)."""

    def init_weight_sync(self, backend, host, port, rank, world_size):
        """In the worker: join the sync group as `rank`."""
        from common.sync_group import create_sync_group

        self._sync_group = create_sync_group(backend, host, port, rank, world_size)

    def receive_weights(self, wire_plan):
        """Receive a broadcast into every worker, then drop the prefix and encoder caches of the old weights."""
        import torch

        from common.sync_group import plan_from_wire, receive_buckets

        plan = plan_from_wire(wire_plan)
        self.reload_weights(weights_iterator=receive_buckets(self._sync_group, plan, self.device),
                            is_checkpoint_format=True)
        if self.device.type == "cpu":
            refresh_tied_output_layers(self.model_runner.get_model())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def refresh_tied_output_layers(model) -> int:
    """Re-run the weight processing of every output layer (`ParallelLMHead`) that shares its weight with an input
    embedding; returns how many. vLLM skips `lm_head.*` when the embeddings are tied, so an in-place reload loads no
    weight into such a layer and leaves whatever its quantization method derived from the old weight at load time
    (on CPU, a packed GEMM operand). Called on CPU only: on GPU the unquantized method derives nothing, and a
    quantized output layer must not be processed twice."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    inputs = {m.weight.data_ptr() for m in model.modules()
              if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    tied = [m for m in model.modules() if isinstance(m, ParallelLMHead) and m.weight.data_ptr() in inputs]
    for head in tied:
        head.quant_method.process_weights_after_loading(head)
    return len(tied)
