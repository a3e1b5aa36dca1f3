"""`perception-r1 train|eval ...`: the command-line entry point."""
from __future__ import annotations

import sys

from orchestration.config import ConfigError
from orchestration.loaders import DataError


def main(argv: list[str] | None = None) -> int:
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
            from orchestration.sft import main as sft_main

            return sft_main(rest)
        if command == "eval":
            from orchestration.evaluate import main as eval_main

            return eval_main(rest)
        if command == "download-images":
            from orchestration.download import main as download_main

            return download_main(rest)
    except (ConfigError, DataError) as exc:
        print(f"perception-r1: {exc}", file=sys.stderr)
        return 2
    print(f"perception-r1: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
