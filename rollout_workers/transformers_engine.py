"""The transformers generation engine: G samples per prompt with the log-probs of the sampled tokens.

Runs anywhere (the CPU demo and tests use it) and is the fallback where vLLM is missing. Same interface and the same
preprocessed prompts (`EncodedPrompt`) as the vLLM engine, and the same policy (`common/policy.py`): it samples from
`processed_logits` and reports the log-prob of the sampled token under it, which is what the learner recomputes.

Decoding is a plain loop over the model's forward rather than `generate`, for three reasons: the policy function
is applied exactly (no checkpoint generation defaults such as Qwen's repetition penalty slip in), each prompt is
prefilled once and its KV cache repeated for its G answers, and only the sampled tokens' log-probs are kept.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

from common.devices import require_cuda
from common.memory import return_large_blocks_to_os
from common.progress import quiet_libraries
from common.policy import Policy, eos_token_ids, model_policy, processed_logits
from common.records import EncodedPrompt, Rollout, SamplingParams
from common.sync_group import WeightPlan, create_sync_group, receive_partitions, torch_dtype
from common.vision import mm_token_type_ids


class PreallocatedLayer(DynamicLayer):
    """A full-attention KV-cache layer that writes each step's keys and values into a buffer sized for the whole
    answer, where transformers' `DynamicLayer` concatenates (a new [rows, kv heads, length, head dim] tensor per
    layer and token, i.e. a copy of the whole cache and, from 4 MB up, a fresh mapping to fault in: half of the demo
    engine's time). `keys` / `values` are views of the filled part, so attention sees the same tensors, values and
    shapes as with `DynamicLayer`; a layer that would outgrow its `capacity` (tokens) grows by concatenation."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append `key_states` / `value_states` ([rows, kv heads, new tokens, head dim]) and return the keys and
        values so far ([rows, kv heads, tokens, head dim], views of the buffer)."""
        if not self.is_initialized:
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self._allocate(key_states.shape[0], key_states.shape[1], max(self.capacity, key_states.shape[-2]),
                           key_states.shape[-1], value_states.shape[-1])
            self.length = 0
        n = self.length + key_states.shape[-2]
        if n > self._keys.shape[-2]:  # past the planned length: keep working, at DynamicLayer's cost
            self._keys = torch.cat([self._keys[:, :, : self.length], key_states], dim=-2)
            self._values = torch.cat([self._values[:, :, : self.length], value_states], dim=-2)
        else:
            self._keys[:, :, self.length : n] = key_states
            self._values[:, :, self.length : n] = value_states
        self.length = n
        self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]
        return self.keys, self.values

    def _allocate(self, rows: int, heads: int, capacity: int, key_dim: int, value_dim: int) -> None:
        self._keys = torch.empty((rows, heads, capacity, key_dim), dtype=self.dtype, device=self.device)
        self._values = torch.empty((rows, heads, capacity, value_dim), dtype=self.dtype, device=self.device)

    def _rebuild(self, rows: torch.Tensor) -> None:
        """Keep buffer rows `rows` (an index tensor, repeats allowed), copying only the filled part."""
        keys, values = self.keys.index_select(0, rows), self.values.index_select(0, rows)
        self._allocate(len(rows), keys.shape[1], self._keys.shape[-2], keys.shape[-1], values.shape[-1])
        self._keys[:, :, : self.length], self._values[:, :, : self.length] = keys, values
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row `repeats` times in place (a prompt's prefilled cache becomes its G answers')."""
        if self.get_seq_length() > 0:
            self._rebuild(torch.arange(self._keys.shape[0], device=self.device).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices` (a 1-D index tensor), in that order."""
        if self.get_seq_length() > 0:
            self._rebuild(indices.to(self.device))

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported: the engine never crops (no speculative decoding); raises NotImplementedError."""
        raise NotImplementedError("the engine never crops its cache")


def preallocated_cache(config, capacity: int):
    """transformers' `DynamicCache` for `config` with each full-attention layer a `PreallocatedLayer` of
    `capacity` tokens (sliding-window layers, where a config has them, stay as transformers builds them)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class TransformersEngine:
    """A Qwen2.5-VL policy loaded with `from_pretrained`, sampling with a KV-cached decoding loop."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32", num_threads: int | None = None,
                 allowed_tokens: list[str] | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if device == "cuda":
            require_cuda("rollout.device")
        if num_threads:
            torch.set_num_threads(num_threads)
        return_large_blocks_to_os()  # each decode step frees [rows, vocabulary] logits: give them back
        quiet_libraries()
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch_dtype(dtype)).to(device)
        self._setup(model, AutoProcessor.from_pretrained(model_path).tokenizer, allowed_tokens)

    @classmethod
    def from_model(cls, model, tokenizer, allowed_tokens: list[str] | None = None) -> TransformersEngine:
        """An engine over a model already in this process (the warm start's probe decodes with the model it is
        training); the model is shared, not copied, and is put in eval mode while it generates."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, allowed_tokens)
        return engine

    def _setup(self, model, tokenizer, allowed_tokens: list[str] | None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        gen = self.model.generation_config
        self.eos_ids = eos_token_ids(gen, self.tokenizer)
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.policy = model_policy(self.tokenizer, self.model.config, self.eos_ids, allowed_tokens)
        self.version = 0
        self._params = dict(self.model.named_parameters())
        self._sync_group = None

    # ---- generation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[EncodedPrompt], sampling: SamplingParams) -> list[list[Rollout]]:
        """For each prompt, `sampling.n` answers (temperature 0: greedy). All prompts decode as one batch; request
        i draws from its own generator seeded `sampling.seed + i * n`, so a prompt's answers do not depend on which
        other prompts share the call."""
        if not requests:
            return []
        policy = replace(self.policy, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        training = self.model.training
        self.model.eval()
        try:
            tokens, logprobs = self._decode(requests, sampling, policy)
        finally:
            self.model.train(training)
        groups = []
        for i, req in enumerate(requests):
            rows = range(i * sampling.n, (i + 1) * sampling.n)
            groups.append([self._rollout(req, tokens[r], logprobs[r]) for r in rows])
        return groups

    def _decode(self, requests: list[EncodedPrompt], sampling: SamplingParams,
                policy: Policy) -> tuple[list[list[int]], list[list[float]]]:
        """Prefill every prompt once (left-padded batch), repeat each KV cache G times, then sample token by token;
        rows leave the batch when they end. Returns per row (prompt-major, G rows per prompt) ids and log-probs."""
        B, G, dev = len(requests), sampling.n, self.device
        L = max(len(r.prompt_token_ids) for r in requests)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, L), dtype=torch.long)
        for b, r in enumerate(requests):
            ids[b, L - len(r.prompt_token_ids):] = torch.tensor(r.prompt_token_ids)
            attention[b, L - len(r.prompt_token_ids):] = 1
        ids, attention = ids.to(dev), attention.to(dev)
        types = mm_token_type_ids(ids, self.model.config)
        # torch.tensor copies: arrays from Ray's object store are read-only.
        grid = torch.tensor(np.concatenate([r.image_grid_thw for r in requests])).to(dev)
        pixels = torch.tensor(np.concatenate([r.pixel_values for r in requests])).to(dev, self.model.dtype)
        # Qwen2.5-VL's 3D positions, given explicitly so that the repeated rows need no per-batch model state.
        positions, _ = self.model.model.get_rope_index(ids, types, image_grid_thw=grid, attention_mask=attention)
        next_pos = positions.amax(dim=(0, 2)) + 1  # [B] the first answer token's position
        cache = preallocated_cache(self.model.config, L + sampling.max_new_tokens)
        out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, pixel_values=pixels,
                         image_grid_thw=grid, mm_token_type_ids=types, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        logits = out.logits[:, -1].repeat_interleave(G, dim=0)  # [B*G, V]
        cache.batch_repeat_interleave(G)
        attention = attention.repeat_interleave(G, dim=0)
        next_pos = next_pos.repeat_interleave(G)

        generators = []
        if not policy.greedy:
            for b in range(B):
                g = torch.Generator(device=dev)
                g.manual_seed(sampling.seed + b * G if sampling.seed is not None else int(torch.randint(2**62, ())))
                generators.append(g)
        eos = torch.tensor(sorted(self.eos_ids), device=dev)
        rows = torch.arange(B * G, device=dev)  # original row of each live row
        record: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per step: (rows, tokens, log-probs)
        alive = torch.ones(len(rows), dtype=torch.bool, device=dev)  # rows of the batch still answering
        for step in range(sampling.max_new_tokens):
            z = processed_logits(logits, policy)
            if policy.greedy:
                tok = z.argmax(dim=-1)
            else:
                probs = torch.softmax(z, dim=-1)
                tok = torch.full((len(rows),), self.pad_id, dtype=torch.long, device=dev)
                prompt_of_row = rows // G
                for b in prompt_of_row[alive].unique().tolist():  # a finished row draws nothing
                    sel = ((prompt_of_row == b) & alive).nonzero().squeeze(1)
                    tok[sel] = torch.multinomial(probs[sel], 1, generator=generators[b]).squeeze(1)
            lp = torch.log_softmax(z, dim=-1).gather(1, tok[:, None]).squeeze(1)
            record.append((rows[alive], tok[alive], lp[alive]))
            alive &= ~torch.isin(tok, eos)
            if step + 1 == sampling.max_new_tokens or not alive.any():
                break
            # Finished rows leave the batch and the KV cache only once a quarter of it has finished: each removal
            # copies the whole cache (~1 GB per copy for 64 answers to 3B-size prompts), one per finishing row
            # when done eagerly. Until then they decode a pad token, whose output is not used.
            if int(alive.sum()) <= 0.75 * len(rows):
                keep = alive.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, tok, attention, next_pos, alive = (rows[keep], tok[keep], attention[keep], next_pos[keep],
                                                         alive[keep])
            tok = torch.where(alive, tok, self.pad_id)
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
            pos = (next_pos + step).view(1, -1, 1).expand(3, -1, 1)
            logits = self.model(input_ids=tok[:, None], attention_mask=attention, position_ids=pos,
                                past_key_values=cache, use_cache=True).logits[:, -1]
        tokens: list[list[int]] = [[] for _ in range(B * G)]
        logprobs: list[list[float]] = [[] for _ in range(B * G)]
        for step_rows, tok, lp in record:
            for r, t, l in zip(step_rows.tolist(), tok.tolist(), lp.tolist()):
                tokens[r].append(t)
                logprobs[r].append(l)
        return tokens, logprobs

    def _rollout(self, req: EncodedPrompt, response: list[int], logprobs: list[float]) -> Rollout:
        finish = "stop" if response and response[-1] in self.eos_ids else "length"
        text_ids = response[:-1] if finish == "stop" else response
        return Rollout(
            sample_id=req.sample_id,
            prompt_token_ids=list(req.prompt_token_ids),
            response_token_ids=response,
            response_text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
            logprobs=logprobs,
            policy_version=self.version,
            finish_reason=finish,
        )

    # ---- weights ----------------------------------------------------------------------------------------------
    def policy_version(self) -> int:
        """The weights version this engine holds (0 before the first sync)."""
        return self.version

    def init_weight_sync(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the sync group whose rank 0 is learner rank 0."""
        self._sync_group = create_sync_group(backend, host, port, rank, world_size)

    @torch.no_grad()
    def receive_weights(self, version: int, plan: WeightPlan) -> int:
        """Receive every learner rank's partitions and copy each straight into its slice of the parameter (one
        copy, no full tensor assembled); returns the new version."""
        if self._sync_group is None:
            raise RuntimeError("receive_weights called before init_weight_sync")
        for meta, pieces in receive_partitions(self._sync_group, plan, self.device):
            flat = self._param(meta.name, meta.shape).data.view(-1)
            offset = 0
            for piece in pieces:
                n = min(piece.numel(), meta.numel - offset)
                flat[offset : offset + n].copy_(piece[:n])
                offset += n
        self.version = version
        return version

    def _param(self, name: str, shape) -> torch.nn.Parameter:
        param = self._params.get(name)
        if param is None:
            raise KeyError(f"engine model has no parameter named {name!r}")
        if tuple(param.shape) != tuple(shape):
            raise ValueError(f"shape mismatch for {name!r}: engine {tuple(param.shape)} vs {tuple(shape)}")
        return param

    @torch.no_grad()
    def load_weights(self, version: int, named_tensors) -> int:
        """Copy full tensors into the parameters of the same name (unknown names are an error, not skipped)."""
        for name, tensor in named_tensors:
            self._param(name, tensor.shape).copy_(tensor)
        self.version = version
        return version

    def shutdown(self) -> None:
        """Nothing to stop: the model lives in this process."""

    def state_checksums(self) -> dict[str, float]:
        """Sum of each parameter (float64): lets a test compare engine and learner weights cheaply."""
        return {n: float(p.detach().double().sum()) for n, p in self._params.items()}

    def get_parameter(self, name: str) -> np.ndarray:
        """One parameter as a float32 numpy array (tests compare it with the learner's)."""
        return self._params[name].detach().float().cpu().numpy()
