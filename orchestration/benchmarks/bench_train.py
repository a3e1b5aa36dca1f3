"""`make bench-train`: GRPO training throughput of this project against TRL's GRPOTrainer, side by side.

Both train the same tiny Qwen2.5-VL checkpoint on the same synthetic counting scenes (112 px, 16 image tokens), with
the same prompt, 8 prompts x G = 8 answers per step, at most 32 new tokens, beta 0.04, fp32, temperature 1 and no
top-k/top-p, one optimizer update per batch. Each run is a fresh process; the two trainers alternate, at both sizes.
Printed: samples/s (answers per second of step time, after warm-up steps) and generated tokens/s of each, their
ratio, the project's per-phase times, and its weight-sync rate beside a bare memcpy and a bare gloo broadcast of the
same bytes measured in the same run. Then the colour demo with train.max_staleness 0 and 1.

    python -m orchestration.benchmarks.bench_train [--sizes demo,small] [--rounds 2] [--steps 5] [--no-staleness]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("outputs/bench_train")
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"  # the colour toy, for the sync figure
SIZES = {  # write_tiny_qwen25vl arguments
    "demo": dict(hidden_size=64, num_layers=2, vision_hidden_size=32, vision_depth=2),
    "small": dict(hidden_size=512, num_layers=8, vision_hidden_size=128, vision_depth=4),
}
PIXELS, IMAGE, PROMPTS, G, NEW_TOKENS, BETA, LR = 12544, 112, 8, 8, 32, 0.04, 1e-5


def checkpoint(size: str) -> str:
    """The one checkpoint both trainers start from, written once."""
    from orchestration.warmstart.tiny_model import write_tiny_qwen25vl

    path = ROOT / size / "model"
    if not (path / "config.json").is_file():
        write_tiny_qwen25vl(path, min_pixels=PIXELS, max_pixels=PIXELS, **SIZES[size])
    return str(path.resolve())


# ---- the project ----------------------------------------------------------------------------------------------------
def run_project(size: str, steps: int, warmup: int) -> dict:
    """This project's GRPO on the benchmark's checkpoint and scenes: samples/s, tokens/s, per-phase seconds, sync GB/s."""
    from orchestration.config import load_config
    from orchestration.train import train

    cfg = load_config(None, [
        f"model.path={checkpoint(size)}", f"model.min_pixels={PIXELS}", f"model.max_pixels={PIXELS}",
        "model.max_prompt_tokens=256", "data.task=counting", f"data.image_size={IMAGE}",
        f"data.train_size={PROMPTS * (steps + warmup)}", "data.eval_size=4", f"train.prompts_per_step={PROMPTS}",
        f"grpo.group_size={G}", f"rollout.max_new_tokens={NEW_TOKENS}", "rollout.top_p=1.0", "rollout.top_k=0",
        f"grpo.beta={BETA}", f"learner.lr={LR}", f"learner.micro_batch_size={PROMPTS * G // 2}",
        f"train.steps={steps + warmup}", f"train.output_dir={ROOT / size / 'project'}", "wandb.mode=disabled",
        "train.export_final=false", "train.checkpoint_every=0"])
    history = train(cfg).history[warmup:]
    step = statistics.mean(h["time/step_s"] for h in history)
    tokens = statistics.mean(h["response/length_mean"] for h in history) * PROMPTS * G
    phases = {k.split("/")[1]: statistics.mean(h[k] for h in history)
              for k in ("time/generate_s", "time/reward_tail_s", "time/train_s", "time/sync_s")}
    sync_gbs = statistics.mean(h["sync/bytes"] / h["time/sync_s"] for h in history) / 1e9
    return {"samples_per_s": PROMPTS * G / step, "tokens_per_s": tokens / step, "step_s": step, "phases": phases,
            "sync_gb_s": sync_gbs, "sync_bytes": history[-1]["sync/bytes"],
            "mean_answer_tokens": tokens / (PROMPTS * G)}


# ---- TRL's GRPOTrainer ------------------------------------------------------------------------------------------------
def run_trl(size: str, steps: int, warmup: int, seed: int = 0) -> dict:
    """TRL (the `bench` extra) on the same checkpoint, scenes, prompt, G, lengths and beta."""
    import torch
    from datasets import Dataset
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from common.records import RewardContext
    from common.vision import SYSTEM_PROMPT, resize_for_model
    from orchestration.data.synthetic import SYNTHETIC
    from reward_service.config import RewardOptions
    from reward_service.registry import reward_fn

    model_dir = checkpoint(size)
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = []
    for s in SYNTHETIC["counting"](PROMPTS * (steps + warmup), seed, IMAGE, "train"):
        image = s.load_image()
        resized = resize_for_model(image, PIXELS, PIXELS)
        rows.append({
            # TRL puts the image before the question text: the project's prompt, token for token.
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": s.question}],
            "image": resized, "sample_id": s.id, "solution": json.dumps(s.solution),  # Arrow: one schema per column
            "scale": [resized.width / image.width, resized.height / image.height],
            "resized_size": [resized.width, resized.height], "orig_size": [image.width, image.height],
        })
    counting, options, lengths = reward_fn("counting"), RewardOptions(), []

    def reward(completions, completion_ids, sample_id, solution, scale, resized_size, orig_size, **_):
        lengths.append([len(ids) for ids in completion_ids])
        return [float(counting(c[-1]["content"], RewardContext(sid, "counting", json.loads(sol), tuple(sc),
                                                               tuple(rs), tuple(os_)), options)["total"])
                for c, sid, sol, sc, rs, os_ in zip(completions, sample_id, solution, scale, resized_size, orig_size)]

    marks: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    config = GRPOConfig(
        output_dir=str(ROOT / size / "trl"), per_device_train_batch_size=PROMPTS * G, num_generations=G,
        gradient_accumulation_steps=1, num_iterations=1, max_steps=steps + warmup, max_completion_length=NEW_TOKENS,
        learning_rate=LR, lr_scheduler_type="constant", beta=BETA, loss_type="grpo", scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"}, use_cpu=not torch.cuda.is_available(), report_to="none",
        logging_steps=1, save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=seed,
    )
    trainer = GRPOTrainer(model=model_dir, reward_funcs=[reward], args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=processor, callbacks=[StepTimer()])
    trainer.train()
    step_s = [b - a for a, b in zip(marks, marks[1:])][warmup:]
    step = statistics.mean(step_s)
    tokens = statistics.mean(sum(x) for x in lengths[warmup:])
    return {"samples_per_s": PROMPTS * G / step, "tokens_per_s": tokens / step, "step_s": step,
            "mean_answer_tokens": tokens / (PROMPTS * G)}


# ---- bare transports, for the sync rate ---------------------------------------------------------------------------
def bare_transports(nbytes: int, reps: int = 5) -> dict:
    """GB/s of a plain tensor copy and of a gloo broadcast between two processes, of `nbytes`."""
    import torch
    import torch.multiprocessing as mp

    from common.sync_group import free_port

    n = nbytes // 4
    src, dst = torch.randn(n), torch.empty(n)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    memcpy = nbytes * reps / (time.perf_counter() - t0) / 1e9
    host, port = free_port()
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_worker, args=(r, host, port, n, reps, result)) for r in (0, 1)]
    for p in procs:
        p.start()
    seconds = result.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    return {"memcpy_gb_s": memcpy, "gloo_broadcast_gb_s": nbytes * reps / seconds / 1e9}


def _broadcast_worker(rank: int, host: str, port: int, n: int, reps: int, result) -> None:
    import torch

    from common.sync_group import create_sync_group

    group = create_sync_group("gloo", host, port, rank, 2)
    t = torch.randn(n) if rank == 0 else torch.empty(n)
    group.broadcast(t, 0).wait()
    t0 = time.perf_counter()
    for _ in range(reps):
        group.broadcast(t, 0).wait()
    if rank == 1:
        result.put(time.perf_counter() - t0)


# ---- staleness on the colour demo ---------------------------------------------------------------------------------
def run_demo(max_staleness: int) -> dict:
    """The colour demo at `train.max_staleness` 0 or 1: eval reward and seconds per step."""
    from orchestration.config import load_config
    from orchestration.train import train

    cfg = load_config(DEMO_CONFIG, [
        f"train.max_staleness={max_staleness}", f"train.output_dir={ROOT / f'demo_staleness_{max_staleness}'}",
        "wandb.mode=disabled", "train.checkpoint_every=0"])
    r = train(cfg)
    return {"eval_before": r.eval_before, "eval_after": r.eval_after,
            "step_s": statistics.mean(h["time/step_s"] for h in r.history),
            "max_staleness_seen": max(h["policy/staleness"] for h in r.history)}


# ---- driver -------------------------------------------------------------------------------------------------------
def _in_child(what: str, *args) -> dict:
    """Each measurement in a fresh process (no state, threads or memory carried from one to the next)."""
    out = subprocess.run([sys.executable, "-m", "orchestration.benchmarks.bench_train", "--child", what, *map(str, args)],
                         capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{what} {args} failed (rc {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    """`make bench-train`: alternated runs of both trainers, then the printed comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="demo,small")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-staleness", action="store_true")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        what, *rest = a.child
        fn = {"project": run_project, "trl": run_trl, "demo": run_demo, "bare": bare_transports}[what]
        print("RESULT " + json.dumps(fn(*[int(x) if x.isdigit() else x for x in rest])), flush=True)
        return 0

    sizes = a.sizes.split(",")
    runs: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(a.rounds):
        for size in sizes:
            for who in (("project", "trl") if rnd % 2 == 0 else ("trl", "project")):  # alternated
                print(f"round {rnd + 1}: {who} at {size} size ...", file=sys.stderr, flush=True)
                runs.setdefault((who, size), []).append(_in_child(who, size, a.steps, a.warmup))
    print(f"\nGRPO throughput, {PROMPTS} prompts x G {G}, <= {NEW_TOKENS} new tokens, beta {BETA}, fp32, this machine"
          f" ({os.cpu_count()} cores); mean of {a.rounds} alternated runs of {a.steps} steps after {a.warmup} warm-up")
    print(f"{'size':<7}{'project samples/s':>19}{'TRL samples/s':>15}{'ratio':>8}{'project tok/s':>15}"
          f"{'TRL tok/s':>11}{'answer tokens p/T':>19}")
    for size in sizes:
        p, t = runs[("project", size)], runs[("trl", size)]
        ps, ts = statistics.mean(r["samples_per_s"] for r in p), statistics.mean(r["samples_per_s"] for r in t)
        print(f"{size:<7}{ps:>19.2f}{ts:>15.2f}{ps / ts:>7.2f}x{statistics.mean(r['tokens_per_s'] for r in p):>15.0f}"
              f"{statistics.mean(r['tokens_per_s'] for r in t):>11.0f}"
              f"{statistics.mean(r['mean_answer_tokens'] for r in p):>11.1f} /"
              f"{statistics.mean(r['mean_answer_tokens'] for r in t):>5.1f}")
    for size in sizes:
        p = runs[("project", size)]
        phases = {k: statistics.mean(r["phases"][k] for r in p) for k in p[0]["phases"]}
        print(f"project at {size} size, per step: " + ", ".join(f"{k.removesuffix('_s')} {v:.3f}s"
                                                                for k, v in phases.items()))
    big = sizes[-1]
    nbytes = int(runs[("project", big)][0]["sync_bytes"])
    bare = _in_child("bare", nbytes)
    sync = statistics.mean(r["sync_gb_s"] for r in runs[("project", big)])
    print(f"weight sync at {big} size ({nbytes / 1e6:.0f} MB): {sync:.2f} GB/s effective; same bytes, same run: "
          f"memcpy {bare['memcpy_gb_s']:.2f} GB/s, bare gloo broadcast {bare['gloo_broadcast_gb_s']:.2f} GB/s")
    if not a.no_staleness:
        for staleness in (0, 1):
            d = _in_child("demo", staleness)
            print(f"colour demo, train.max_staleness={staleness}: eval reward {d['eval_before']:.3f} -> "
                  f"{d['eval_after']:.3f}, {d['step_s']:.3f} s/step, largest staleness seen {d['max_staleness_seen']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
