"""The transformers generation engine: G samples per prompt with the log-probs of the sampled tokens.

Runs anywhere (the CPU demo and tests use it) and is the fallback where vLLM is missing. Same interface and the
same preprocessed prompts (`EncodedPrompt`) as the vLLM engine.
"""
from __future__ import annotations

import numpy as np
import torch

from common.policy import eos_token_ids, resolve_allowed_ids, token_logprobs, vision_token_ids
from common.records import EncodedPrompt, Rollout, SamplingParams
from common.sync_group import WeightPlan, broadcast_from_rank0, create_sync_group, torch_dtype, unflatten_bucket
from common.vision import mm_token_type_ids


class TransformersEngine:
    """A Qwen2.5-VL policy loaded with `from_pretrained`, sampling with `generate`."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32", num_threads: int | None = None,
                 allowed_tokens: list[str] | None = None):
        from transformers import AutoProcessor, AutoModelForImageTextToText

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch_dtype(dtype)).to(self.device)
        self.model.eval()
        self.tokenizer = AutoProcessor.from_pretrained(model_path).tokenizer
        gen = self.model.generation_config
        self.eos_ids = eos_token_ids(gen, self.tokenizer)
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        cfg = self.model.config
        # The policy must never emit vision placeholders: in the learner's forward they would be taken for
        # image slots ("image features and image tokens do not match").
        self.suppressed_ids = vision_token_ids(cfg)
        # An answer vocabulary, when configured, defines the policy: sample only these, log-probs over these.
        self.allowed_ids = resolve_allowed_ids(self.tokenizer, allowed_tokens, self.eos_ids)
        if self.allowed_ids is not None:
            allowed = set(self.allowed_ids.tolist())
            self.suppressed_ids = [i for i in range(self.model.config.get_text_config().vocab_size) if i not in allowed]
        self.version = 0
        self._params = dict(self.model.named_parameters())
        self._sync_group = None

    # ---- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[EncodedPrompt], sampling: SamplingParams) -> list[list[Rollout]]:
        """For each prompt, `sampling.n` answers; temperature 0 means greedy."""
        return [self._generate_one(req, sampling) for req in requests]

    def _generate_one(self, req: EncodedPrompt, sampling: SamplingParams) -> list[Rollout]:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        ids = torch.tensor([req.prompt_token_ids], device=self.device)
        inputs = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            # torch.tensor copies: arrays from Ray's object store are read-only.
            pixel_values=torch.tensor(req.pixel_values).to(self.device, self.model.dtype),
            image_grid_thw=torch.tensor(req.image_grid_thw).to(self.device),
            mm_token_type_ids=mm_token_type_ids(ids, self.model.config),
        )
        greedy = sampling.temperature <= 0
        out = self.model.generate(
            **inputs,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else sampling.top_k,
            num_return_sequences=sampling.n,
            max_new_tokens=sampling.max_new_tokens,
            suppress_tokens=self.suppressed_ids,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        prompt_len = ids.shape[1]
        sequences = out.sequences[:, prompt_len:]
        # Raw (unprocessed) logits: the log-prob of the policy itself at the sampling temperature, which is what
        # the learner recomputes; top-p/top-k truncation is not part of it (as in TRL, veRL, OpenRLHF).
        logits = torch.stack(out.logits, dim=1)  # [n, T, V]
        token_lp = token_logprobs(logits, sequences, 1.0 if greedy else sampling.temperature, self.allowed_ids)
        rollouts = []
        for seq, lp in zip(sequences.tolist(), token_lp.tolist()):
            end = next((i + 1 for i, t in enumerate(seq) if t in self.eos_ids), None)
            finish = "stop" if end is not None else "length"
            end = end if end is not None else len(seq)
            response = seq[:end]
            text_ids = response[:-1] if finish == "stop" else response
            rollouts.append(Rollout(
                sample_id=req.sample_id,
                prompt_token_ids=list(req.prompt_token_ids),
                response_token_ids=response,
                response_text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
                logprobs=lp[:end],
                policy_version=self.version,
                finish_reason=finish,
            ))
        return rollouts

    # ---- weights ----------------------------------------------------------------------------------------------
    def policy_version(self) -> int:
        return self.version

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the sync group whose rank 0 is learner rank 0."""
        self._sync_group = create_sync_group(backend, host, port, rank, world_size)

    def receive_weights(self, version: int, plan: WeightPlan) -> int:
        """Receive every bucket broadcast by learner rank 0 and load it by name; returns the new version."""
        if self._sync_group is None:
            raise RuntimeError("receive_weights called before init_weight_sync")
        for bucket in plan:
            flat = torch.empty(sum(m.numel for m in bucket), dtype=torch_dtype(bucket[0].dtype), device=self.device)
            broadcast_from_rank0(self._sync_group, flat).wait()
            self.load_weights(version, unflatten_bucket(flat, bucket), bump=False)
        self.version = version
        return version

    @torch.no_grad()
    def load_weights(self, version: int, named_tensors, bump: bool = True) -> int:
        """Copy full tensors into the parameters of the same name (unknown names are an error, not skipped)."""
        for name, tensor in named_tensors:
            param = self._params.get(name)
            if param is None:
                raise KeyError(f"engine model has no parameter named {name!r}")
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"shape mismatch for {name!r}: engine {tuple(param.shape)} vs {tuple(tensor.shape)}")
            param.copy_(tensor)
        if bump:
            self.version = version
        return self.version

    def state_checksums(self) -> dict[str, float]:
        """Sum of each parameter (float64): lets a test compare engine and learner weights cheaply."""
        return {n: float(p.detach().double().sum()) for n, p in self._params.items()}

    def get_parameter(self, name: str) -> np.ndarray:
        return self._params[name].detach().float().cpu().numpy()

