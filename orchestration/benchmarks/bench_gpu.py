"""`make bench-gpu`: where a GRPO step's time goes on one device, against bare baselines measured in the same run.

On a CUDA machine it builds a Qwen2.5-VL-3B-shaped checkpoint (the real config numbers: hidden 2048, 36 layers, 16/2
heads, MLP 11008, vision 1280 x 32, vocabulary 151,936, tied embeddings; random weights, the project's tokenizer);
on a CPU the same script runs at a small size (`--size small`: bench-train's 20 M parameters; `tiny` for CI). Then:

  engine   the transformers engine samples 8 grounding prompts x G 8 with the paper's sampling, against
           transformers' own `generate` on the same prompts (generated tokens/s, and the ratio)
  learner  one ZeRO-3 rank in its own process: GRPO steps on those 64 answers, packed by token budget (shared
           prefix), as full rows, and (from a `git archive` of `--baseline` into outputs/) as main did them before,
           in micro-batches of 8 answers: seconds per step, model TFLOP/s, peak GiB, profiler-recorded ops per
           step, the engine/learner log-prob gap
  bare     the same answers through the plain model, no DeepSpeed (full padded rows, AdamW): the floor
  sync     the weight broadcast learner -> engine (GB/s) and whether the engine then holds the learner's weights

    python -m orchestration.benchmarks.bench_gpu [--size 3b|small|tiny] [--steps 3] [--baseline 0b29e31 | --baseline none]
"""
from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path("outputs/bench_gpu")
G, PROMPTS = 8, 8
SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 0.9}
SIZES = {  # text hidden, MLP, layers, heads, kv heads, vision hidden, vision MLP, vision depth, image side, new tokens
    "3b": dict(hidden=2048, mlp=11008, layers=36, heads=16, kv=2, vhidden=1280, vmlp=3420, vdepth=32, side=448,
               new=128, vocab=151936),
    "small": dict(hidden=512, mlp=1024, layers=8, heads=4, kv=2, vhidden=128, vmlp=256, vdepth=4, side=112, new=32,
                  vocab=None),
    "tiny": dict(hidden=64, mlp=128, layers=2, heads=4, kv=2, vhidden=32, vmlp=64, vdepth=2, side=112, new=16,
                 vocab=None),
}
TOKEN_BUDGET = {"3b": 32768, "small": 16384, "tiny": 16384}


def build(path: Path, size: str, device: str, dtype: torch.dtype) -> tuple[int, int]:
    """A Qwen2.5-VL checkpoint of `size` with random weights and the project's tokenizer; (params, LM params)."""
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from orchestration.warmstart.tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

    s, tok = SIZES[size], build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    half = s["hidden"] // s["heads"] // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=s["vocab"] or len(tok), hidden_size=s["hidden"], intermediate_size=s["mlp"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                         num_key_value_heads=s["kv"], max_position_embeddings=32768, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], rms_norm_eps=1e-6),
        vision_config=dict(depth=s["vdepth"], hidden_size=s["vhidden"], intermediate_size=s["vmlp"], num_heads=16
                           if size == "3b" else 2, out_hidden_size=s["hidden"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31] if size == "3b" else [s["vdepth"] - 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    n_lm = sum(p.numel() for name, p in model.named_parameters() if ".visual." not in f".{name}")
    pixels = s["side"] ** 2
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(size={"shortest_edge": pixels, "longest_edge": pixels},
                                                              patch_size=14, merge_size=2, temporal_patch_size=2),
                        tokenizer=tok, chat_template=CHAT_TEMPLATE,
                        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
                        ).save_pretrained(path)
    return n, n_lm


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0


def count_ops(fn) -> tuple[float, int]:
    """(seconds, profiler-recorded CPU ops) of one call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return time.perf_counter() - t0, len(prof.events())


def forwarded_tokens(shard, micro: list[list], shared: bool) -> int:
    """Tokens the step forwards (padding not counted): each micro-batch's prompts once with shared prefix, once per
    answer as full rows, plus every answer."""
    answers = sum(len(it.response_token_ids) for it in shard.items)
    if not shared:
        return answers + sum(len(it.prompt_token_ids) for it in shard.items)
    return answers + sum(len(shard.prompts[s].prompt_token_ids) for batch in micro
                         for s in dict.fromkeys(it.sample_id for it in batch))


def learner_child(path: str, shard, q, device: str, size: str, steps: int, modes: list[str], sync_addr) -> None:
    """One ZeRO-3 rank (this process): `steps` timed GRPO steps per mode after a warm-up, then the weight send."""
    try:
        os.environ["DS_ACCELERATOR"] = device
        from common.sync_group import free_port
        from learner.config import GRPOConfig, LearnerConfig
        from learner.rank import LearnerRank

        new_api = "grad_accum" not in inspect.signature(LearnerRank.__init__).parameters
        opts = dict(num_ranks=1, device=device, dtype="bfloat16" if device == "cuda" else "float32", lr=1e-6,
                    micro_batch_size=G, dist_backend="nccl" if device == "cuda" else "gloo", sync_backend="gloo",
                    gradient_checkpointing=device == "cuda")
        if new_api:
            opts["max_tokens_per_microbatch"] = TOKEN_BUDGET[size]
        kw = {} if new_api else {"grad_accum": len(shard.items) // G}
        t0 = time.perf_counter()
        rank = LearnerRank(path, LearnerConfig(**opts), GRPOConfig(group_size=G, beta=0.04), 0, 1, *free_port(),
                           sampling=SAMPLING, **kw)
        q.put(("load_s", time.perf_counter() - t0))
        first = None  # the first step's metrics: its log-probs are of the weights the engine sampled with
        for mode in modes:
            rank.cfg.shared_prefix = mode != "full_rows"
            micro = rank.plan(shard) if new_api else [shard.items[i : i + G] for i in range(0, len(shard.items), G)]
            warm = rank.train_step(shard)  # warm-up
            first = first or warm
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times, m = [], {}
            for _ in range(steps):
                _sync(device)
                t0 = time.perf_counter()
                m = rank.train_step(shard)
                _sync(device)
                times.append(time.perf_counter() - t0)
            _, ops = count_ops(lambda: rank.train_step(shard))
            q.put((mode, {"step_s": sorted(times)[len(times) // 2], "peak_gib": _peak(device), "ops": ops,
                          "micro_batches": len(micro), "tokens": forwarded_tokens(shard, micro, rank.cfg.shared_prefix),
                          "loss": m["train/loss"]}))
        q.put(("gap", {"mean": first["sampling/logprob_diff_sum"] / max(first["sampling/num_tokens"], 1.0),
                       "max": first["sampling/logprob_diff_max"]}))
        if sync_addr is not None:
            q.put(("plan", rank.weight_plan()))
            rank.init_weight_sync(*sync_addr, world_size=2)
            rank.sync_weights()
            q.put(("checksums", rank.state_checksums()))
        q.put(("done", None))
    except BaseException:  # noqa: BLE001 - the parent reports the child's traceback
        q.put(("error", traceback.format_exc()))


def run_learner(path: str, shard, device: str, size: str, steps: int, modes: list[str], engine=None,
                src: Path | None = None) -> dict:
    """`learner_child` in a spawned process (from `src`'s code when given); with `engine`, the weight broadcast into
    it is timed and checked."""
    from common.sync_group import free_port

    ctx = mp.get_context("spawn")
    q, out = ctx.Queue(), {}
    sync_addr = free_port() if engine is not None else None
    child = ctx.Process(target=_child_entry, args=(str(src) if src else None, path, shard, q, device, size, steps,
                                                    modes, sync_addr))
    child.start()
    try:
        while True:
            key, value = q.get(timeout=1800)
            if key == "error":
                raise RuntimeError(f"learner process failed:\n{value}")
            if key == "done":
                return out
            if key == "plan":
                engine.init_weight_sync("gloo", *sync_addr, rank=1, world_size=2)
                t0 = time.perf_counter()
                engine.receive_weights(1, value)
                _sync(device)
                dt = time.perf_counter() - t0
                out["sync"] = {"bytes": value.nbytes, "s": dt, "gb_per_s": value.nbytes / dt / 1e9}
            elif key == "checksums":
                out["sync"]["weights_equal"] = engine.state_checksums() == value
            else:
                out[key] = value
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()


def _child_entry(src: str | None, *args) -> None:
    """Spawned: with `src` (the baseline's code), that tree's modules replace the project's before the child runs;
    the child imports what it measures inside its body. The project's warning filters are set first, so that the
    baseline's learner logs as quietly as today's."""
    from common.progress import quiet_libraries

    quiet_libraries()
    if src:
        for name in [m for m in sys.modules if m.split(".")[0] in ("common", "learner", "orchestration")]:
            del sys.modules[name]
        sys.path.insert(0, src)
    learner_child(*args)


def bare_step(path: str, shard, device: str, steps: int) -> dict:
    """The same answers through the plain model: no DeepSpeed, full padded rows in micro-batches of G (each row its
    own copy of the image), a frozen reference copy's forward for the KL term (beta 0.04, as the learner), the same
    policy and GRPO loss, one AdamW step; seconds per step and ops."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from common.policy import eos_token_ids, model_policy
    from learner.grpo import grpo_loss
    from learner.sequences import collate, response_logprobs

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device)
    if device == "cuda":
        model.gradient_checkpointing_enable()
    model.train()
    reference = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    policy = model_policy(tokenizer, model.config, eos_token_ids(model.generation_config, tokenizer), **SAMPLING)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
    batches = [collate(shard.items[i : i + G], shard.prompts, model.config, tokenizer.pad_token_id, device, dtype)
               for i in range(0, len(shard.items), G)]

    def step():
        for b in batches:
            with torch.no_grad():
                ref = response_logprobs(reference, b, policy)
            lp = response_logprobs(model, b, policy)
            loss, _ = grpo_loss(lp, lp.detach(), b.advantages, b.mask, ref_logprobs=ref, beta=0.04,
                                normalizer=len(shard.items))
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    _, ops = count_ops(step)
    out = {"step_s": sorted(times)[len(times) // 2], "peak_gib": _peak(device), "ops": ops,
           "tokens": sum(len(it.prompt_token_ids) + len(it.response_token_ids) for it in shard.items)}
    del model, reference, optimizer
    return out


def baseline_tree(rev: str) -> Path | None:
    """`git archive` of `rev` (the code as main ran it before) under outputs/, or None where git cannot give it."""
    dest = ROOT / f"baseline-{rev}"
    if (dest / "learner" / "rank.py").is_file():
        return dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(["git", "archive", rev, "common", "learner", "orchestration", "reward_service",
                                  "rollout_workers"], capture_output=True, check=True, timeout=60)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"bench-gpu: no baseline ({rev}): {exc}", flush=True)
        return None
    return dest.resolve()


def main(argv: list[str] | None = None) -> int:
    """`make bench-gpu [ARGS='--size 3b|small|tiny ...']`: every figure, printed and in results.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="3b" if torch.cuda.is_available() else "small")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--baseline", default="0b29e31", help="git revision of the learner to compare ('none': skip)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size, s = args.size, SIZES[args.size]
    out_dir = ROOT / size
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"size": size, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                     "torch": torch.__version__}
    t_all = time.perf_counter()

    from transformers import AutoProcessor

    from common.records import SamplingParams, TrainItem, TrainShard
    from common.vision import encode_prompt
    from learner.grpo import group_advantages
    from orchestration.data.synthetic import grounding_samples
    from rollout_workers.transformers_engine import TransformersEngine

    path = out_dir / "model"
    t0 = time.perf_counter()
    n, n_lm = build(path, size, device, dtype)
    results["params"], results["lm_params"], results["build_s"] = n, n_lm, time.perf_counter() - t0
    processor = AutoProcessor.from_pretrained(path)
    px = s["side"] ** 2
    prompts = [encode_prompt(processor, x.id, x.load_image().resize((s["side"], s["side"])), x.question,
                             min_pixels=px, max_pixels=px, max_prompt_tokens=4096)
               for x in grounding_samples(PROMPTS, seed=0, objects=(1, 1))]

    engine = TransformersEngine(str(path), device=device, dtype="bfloat16" if device == "cuda" else "float32")
    sampling = SamplingParams(n=G, max_new_tokens=s["new"], seed=0, **SAMPLING)
    engine.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=4, seed=1, **SAMPLING))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    groups = engine.generate(prompts, sampling)
    _sync(device)
    dt = time.perf_counter() - t0
    rollouts = [r for g in groups for r in g]
    generated = sum(len(r.response_token_ids) for r in rollouts)
    results["engine"] = {"s": dt, "tokens": generated, "tokens_per_s": generated / dt}
    results["hf_generate"] = hf_generate(engine, prompts, s["new"], device)
    results["engine"]["ratio_to_hf"] = results["engine"]["tokens_per_s"] / results["hf_generate"]["tokens_per_s"]

    rewards = torch.tensor([float(len(set(r.response_token_ids)) % 7) for r in rollouts]).numpy()
    advantages = group_advantages(rewards, G, "group", 1e-4)
    shard = TrainShard([TrainItem(r.sample_id, r.prompt_token_ids, r.response_token_ids, r.logprobs, float(a))
                        for r, a in zip(rollouts, advantages)], {p.sample_id: p for p in prompts}, len(rollouts),
                       generated)
    results["learner"] = run_learner(str(path), shard, device, size, args.steps, ["shared_prefix", "full_rows"],
                                     engine=engine)
    results["sync"] = results["learner"].pop("sync")
    src = None if args.baseline == "none" else baseline_tree(args.baseline)
    if src is not None:
        results["baseline"] = run_learner(str(path), shard, device, size, args.steps, ["shared_prefix"], src=src)
        results["baseline"]["revision"] = args.baseline
    del engine
    results["bare"] = bare_step(str(path), shard, device, args.steps)
    results["total_s"] = time.perf_counter() - t_all
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report(results, n_lm)
    return 0


def hf_generate(engine, prompts, new_tokens: int, device: str) -> dict:
    """transformers' own `generate` on the same prompts and sampling settings, G rows per prompt (tokens/s)."""
    import numpy as np

    from common.vision import mm_token_type_ids

    model, tok = engine.model, engine.tokenizer
    L = max(len(p.prompt_token_ids) for p in prompts)
    ids = torch.full((len(prompts), L), engine.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, L - len(p.prompt_token_ids):] = torch.tensor(p.prompt_token_ids)
        mask[b, L - len(p.prompt_token_ids):] = 1
    inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                  mm_token_type_ids=mm_token_type_ids(ids, model.config).to(device),
                  pixel_values=torch.tensor(np.concatenate([p.pixel_values for p in prompts])).to(device, model.dtype),
                  image_grid_thw=torch.tensor(np.concatenate([p.image_grid_thw for p in prompts])).to(device))
    kw = dict(do_sample=True, num_return_sequences=G, max_new_tokens=new_tokens, pad_token_id=engine.pad_id,
              eos_token_id=sorted(engine.eos_ids), **SAMPLING)
    torch.manual_seed(0)
    with torch.no_grad():
        model.generate(**{k: v[:1] if k != "pixel_values" else v[: int(prompts[0].image_grid_thw.prod())]
                          for k, v in inputs.items()}, **{**kw, "max_new_tokens": 4})  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(**inputs, **kw)
        _sync(device)
    dt = time.perf_counter() - t0
    new = out[:, L:]
    ends = torch.isin(new, torch.tensor(sorted(engine.eos_ids), device=new.device))
    lengths = torch.where(ends.any(1), ends.int().argmax(1) + 1, torch.full_like(ends[:, 0], new.shape[1], dtype=torch.long))
    del tok
    return {"s": dt, "tokens": int(lengths.sum()), "tokens_per_s": float(lengths.sum()) / dt}


def report(r: dict, n_lm: int) -> None:
    """The figures, one line each."""
    ckpt = 10 if r["device"] != "cpu" else 8  # forward + backward 6N, reference forward 2N, recomputation 2N on GPU
    print(f"bench-gpu on {r['device']} ({r['size']}: {r['params'] / 1e6:.1f} M parameters, {n_lm / 1e6:.1f} M in the "
          f"language model), {r['total_s']:.0f} s in all")
    e, hf = r["engine"], r["hf_generate"]
    print(f"  engine: {e['tokens_per_s']:.0f} generated tokens/s ({e['tokens']} in {e['s']:.2f} s); transformers' "
          f"generate {hf['tokens_per_s']:.0f} tokens/s: {e['ratio_to_hf']:.2f} x")
    bare = r["bare"]
    rows = [("learner, shared prefix, token budget", r["learner"]["shared_prefix"]),
            ("learner, full rows, token budget", r["learner"]["full_rows"])]
    if "baseline" in r:
        rows.append((f"learner as at {r['baseline']['revision']} (micro-batches of {G})", r["baseline"]["shared_prefix"]))
    for name, m in rows:
        print(f"  {name}: {m['step_s']:.2f} s/step, {m['micro_batches']} micro-batches, "
              f"{ckpt * n_lm * m['tokens'] / m['step_s'] / 1e12:.3f} model TFLOP/s, peak {m['peak_gib']:.1f} GiB, "
              f"{m['ops']:,} ops/step, {bare['step_s'] / m['step_s']:.2f} x the bare step")
    gap = r["learner"]["gap"]
    print(f"  engine vs learner log-prob of the sampled tokens, same weights: {gap['mean']:.2e} mean, "
          f"{gap['max']:.2e} max per token")
    if "baseline" in r:
        new, old = r["learner"]["shared_prefix"], r["baseline"]["shared_prefix"]
        print(f"  against {r['baseline']['revision']}: {old['step_s'] / new['step_s']:.2f} x faster, "
              f"{old['ops'] / new['ops']:.1f} x fewer ops per step")
    print(f"  bare PyTorch step (no DeepSpeed, full rows): {bare['step_s']:.2f} s/step, {bare['ops']:,} ops/step, peak "
          f"{bare['peak_gib']:.1f} GiB")
    sync = r["sync"]
    print(f"  weight broadcast: {sync['bytes'] / 1e9:.3f} GB in {sync['s']:.2f} s ({sync['gb_per_s']:.2f} GB/s); "
          f"engine weights equal the learner's: {sync['weights_equal']}")


if __name__ == "__main__":
    sys.exit(main())
