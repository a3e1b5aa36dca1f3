"""Progress for long work that reads well in a terminal and in a log file alike.

In a terminal: a tqdm bar. Anywhere else (a log file, `ray job logs`, CI): one line every `every_s` seconds and one
at the end, instead of tqdm's carriage-return updates, which a file keeps as one ever-growing line. `quiet_libraries`
turns the libraries' own bars (transformers' weight loading, datasets' conversions) off where no terminal shows them.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator


def interactive() -> bool:
    """Whether standard output is a terminal (a bar redraws there; a log keeps every line)."""
    return sys.stdout.isatty()


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "step", initial: int = 0,
             every_s: float = 30.0):
    """An iterable over `iterable` with `set_postfix(**values)`, shown as described above."""
    if interactive():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, file=sys.stdout,
                    dynamic_ncols=True)
    return _Lines(iterable, desc, total, unit, initial, every_s)


class _Lines:
    """`progress` without a terminal: `desc: n/total unit (rate unit/s), key=value ...` every `every_s` seconds."""

    def __init__(self, iterable, desc: str, total: int | None, unit: str, initial: int, every_s: float):
        self.iterable, self.desc, self.unit, self.every_s = iterable, desc, unit, every_s
        self.total = total if total is not None else (len(iterable) + initial if hasattr(iterable, "__len__")
                                                      else None)
        self.n, self.start_n, self.postfix = initial, initial, {}

    def set_postfix(self, **values) -> None:
        """Values shown after the count in the next line, as tqdm's `set_postfix`."""
        self.postfix = values

    def _line(self, elapsed: float) -> str:
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done} {self.unit}s ({rate:.2f} {self.unit}/s, {elapsed:.0f} s){extra}"

    def __iter__(self) -> Iterator:
        t0 = last = time.monotonic()
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.monotonic()
            if now - last >= self.every_s:
                print(self._line(now - t0), flush=True)
                last = now
        print(self._line(time.monotonic() - t0), flush=True)


def quiet_libraries() -> None:
    """Without a terminal: no progress bars from transformers (weight loading and saving) or datasets, and no
    per-step FutureWarnings about torch.distributed collectives DeepSpeed still calls by their old names."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")
    if interactive():
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
