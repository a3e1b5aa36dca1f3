"""`make soak`: the CPU demo for 200 steps, printing the resident memory of every process of the run (the driver,
Ray's daemons, the learner ranks, engines and reward actors) at step 20 and at step 200. A leak shows as growth
between the two; more than 10 % fails.

    python -m orchestration.benchmarks.soak [--steps 200] [--at 20] [key.sub=value ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

from orchestration.config import load_config
from orchestration.driver.tracking import read_jsonl
from orchestration.train import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"


def run_memory() -> dict[str, float]:
    """Resident memory (GiB) of this process and all its descendants, grouped by role."""
    groups: dict[str, float] = defaultdict(float)
    me = psutil.Process(os.getpid())
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline()[:1]) if proc.pid != me.pid else "driver"
            title = proc.name()
            rss = proc.memory_info().rss / 2**30
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for role in ("LearnerActor", "EngineActor", "RewardActor"):
            if role in title or role in name:
                name = role
                break
        else:
            name = "driver" if proc.pid == me.pid else "ray daemons and idle workers"
        groups[name] += rss
    groups["total"] = sum(groups.values())
    return dict(groups)


def watch(metrics: Path, at: list[int], out: dict[int, dict], stop: threading.Event) -> None:
    """Record `run_memory()` as soon as each step in `at` is logged."""
    pending = sorted(at)
    while pending and not stop.is_set():
        if metrics.is_file():
            rows = read_jsonl(metrics)
            trained = {row["step"] for row in rows if "train/loss" in row}
            while pending and pending[0] in trained:
                out[pending.pop(0)] = run_memory()
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    """`make soak`: the colour demo for 200 steps; fails past 10 % growth of any process's resident memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--at", type=int, default=20, help="the early measurement's step")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(CONFIG, [f"train.steps={args.steps}", "train.output_dir=outputs/soak", "train.eval_every=0",
                               "train.checkpoint_every=50", *args.overrides])
    metrics = Path(cfg.train.output_dir) / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    readings: dict[int, dict] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(metrics, [args.at, args.steps], readings, stop), daemon=True)
    watcher.start()
    try:
        train(cfg)
    finally:
        stop.set()
    watcher.join(timeout=5)
    if args.at not in readings or args.steps not in readings:
        print(f"soak: missing a reading ({sorted(readings)})", file=sys.stderr)
        return 1
    early, late = readings[args.at], readings[args.steps]
    print(f"\n{'resident memory (GiB)':<32}{f'step {args.at}':>12}{f'step {args.steps}':>12}{'change':>10}")
    for role in sorted(early, key=lambda r: (r == "total", r)):
        change = late.get(role, 0.0) / early[role] - 1 if early[role] else 0.0
        print(f"{role:<32}{early[role]:>12.3f}{late.get(role, 0.0):>12.3f}{change:>+10.1%}")
    growth = late["total"] / early["total"] - 1
    verdict = "within" if abs(growth) <= args.tolerance else "OUTSIDE"
    print(f"soak: total resident memory {early['total']:.3f} -> {late['total']:.3f} GiB ({growth:+.1%}), {verdict} "
          f"{args.tolerance:.0%}")
    return 0 if abs(growth) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
