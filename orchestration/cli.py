"""`perception-r1 train|eval ...`: the command-line entry point."""
from __future__ import annotations

import sys

from orchestration.config import ConfigError
from orchestration.data.loaders import DataError


def main(argv: list[str] | None = None) -> int:
    """Dispatch `perception-r1 <command>`; a config or data error prints one line and exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: perception-r1 train --config CONFIG [--resume auto|PATH] [key.sub=value ...]\n"
              "       perception-r1 sft --config CONFIG [key.sub=value ...]\n"
              "       perception-r1 eval --config CONFIG --checkpoint DIR [key.sub=value ...]\n"
              "       perception-r1 download-images --file ROWS --out DIR   (PixMo-Count: images by URL + SHA-256)")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            from orchestration.train import main as train_main

            return train_main(rest)
        if command == "sft":
            from orchestration.warmstart.sft import main as sft_main

            return sft_main(rest)
        if command == "eval":
            return eval_main(rest)
        if command == "download-images":
            from orchestration.data.download import main as download_main

            return download_main(rest)
    except (ConfigError, DataError) as exc:
        print(f"perception-r1: {exc}", file=sys.stderr)
        return 2
    print(f"perception-r1: unknown command {command!r}", file=sys.stderr)
    return 2


def eval_main(argv: list[str]) -> int:
    """`perception-r1 eval`: greedy answers of a checkpoint on the eval split (orchestration/evaluate.py), the
    report under --out (default <checkpoint>/eval) and to W&B."""
    import argparse
    import json
    import logging
    from pathlib import Path

    from orchestration.config import load_config
    from orchestration.driver.tracking import Tracker
    from orchestration.evaluate import run_eval

    parser = argparse.ArgumentParser(prog="perception-r1 eval", description="Evaluate a checkpoint with greedy "
                                                                              "decoding")
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="a from_pretrained directory (e.g. <run>/final)")
    parser.add_argument("--out", default=None, help="report folder (default: <checkpoint>/eval)")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or Path(args.checkpoint) / "eval")
    tracker = Tracker(cfg, out)
    try:
        report = run_eval(cfg, args.checkpoint, out, args.examples, tracker)
    finally:
        tracker.finish()
    print(json.dumps({"task": report["task"], "metrics": report["metrics"], "reward_mean": report["reward_mean"]}))
    print(f"report: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
