"""`make train-demo TASK=colour`, verbatim as README.md gives it: a random tiny model learns to name the shape's
colour (held-out greedy reward from chance to >= 0.9), and its output reads well in a log: fewer than 200 lines,
no warning printed twice, no line over 300 characters."""
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.learning]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_make_train_demo_colour_learns_and_its_log_is_quiet():
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "RAY_ADDRESS", "PYTEST_CURRENT_TEST")}
    run = subprocess.run(["make", "train-demo", "TASK=colour"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    lines = out.splitlines()
    [reward] = re.findall(r"eval reward: before ([\d.]+) -> after ([\d.]+)", out)
    print(f"{len(lines)} lines, longest {max(map(len, lines))} characters; eval reward {reward[0]} -> {reward[1]}")
    assert float(reward[1]) >= 0.9 and float(reward[0]) < 0.5, reward
    assert len(lines) < 200, out
    assert max(map(len, lines)) <= 300, max(lines, key=len)
    warnings = Counter(l for l in lines if re.search(r"warn", l, flags=re.I))
    assert all(n == 1 for n in warnings.values()), warnings.most_common(3)
