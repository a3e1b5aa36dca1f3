"""Progress without a terminal: whole lines, one every so often and one at the end, never carriage returns."""
import time

from common.progress import progress


def test_progress_in_a_log_prints_whole_lines_with_the_rate_and_the_postfix(capsys):
    bar = progress(range(5), "SFT", total=5, every_s=0.0)  # pytest's captured stdout is not a terminal
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 6 and lines[-1].startswith("SFT: 5/5 steps (") and lines[-1].endswith("loss=0.200")


def test_progress_in_a_log_is_sparse(capsys):
    for _ in progress(range(50), "GRPO", initial=10, total=60, every_s=3600):
        time.sleep(0.001)
    [line] = capsys.readouterr().out.splitlines()  # only the closing line: the interval never passed
    assert line.startswith("GRPO: 60/60 steps (")
