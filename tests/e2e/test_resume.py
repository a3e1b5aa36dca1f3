"""Exact resume: a run SIGKILLed between checkpoints (or while writing one) and resumed with --resume auto trains the
same prompts at the same steps and ends with bitwise the same weights as a run that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from orchestration.driver.tracking import read_jsonl

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
STEPS = 6
ARGS = ["--config", "configs/demo_cpu.yaml", f"train.steps={STEPS}", "train.checkpoint_every=2",
        "train.prompts_per_step=4", "learner.micro_batch_size=8", "data.train_size=64", "data.eval_size=8",
        "grpo.beta=0.04", "learner.lr=1e-2", "wandb.mode=offline"]


def _start(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "a")
    # Its own W&B service: one inherited from this process (WANDB_SERVICE) would outlive the killed run and
    # keep its run id "in use".
    base = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen([sys.executable, "-m", "orchestration.train", *ARGS, f"train.output_dir={out}", *extra],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**base, **(env or {})})


def _finish(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=600) == 0, out.with_suffix(".log").read_text()[-3000:]


def _sigkill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the whole run: its process group and every process it started (Ray's daemons and actors too)."""
    if proc.poll() is not None:
        return
    tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs([p for p in map(_process, tree) if p is not None], timeout=30)


def _process(pid):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _steps_logged(out: Path) -> int:
    path = out / "samples.jsonl"
    return len(read_jsonl(path)) if path.is_file() else 0


def _assert_same_run(a: Path, b: Path) -> None:
    """Same prompts at every step (none twice, none skipped), same steps and versions, bitwise equal weights."""
    samples_a, samples_b = read_jsonl(a / "samples.jsonl"), read_jsonl(b / "samples.jsonl")
    assert [r["step"] for r in samples_b] == list(range(1, STEPS + 1))
    assert samples_a == samples_b
    steps_a = [r for r in read_jsonl(a / "metrics.jsonl") if "train/loss" in r]
    steps_b = [r for r in read_jsonl(b / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in steps_b] == list(range(1, STEPS + 1)), "no step twice, none missing"
    assert [r["policy/version"] for r in steps_a] == [r["policy/version"] for r in steps_b]
    assert [r["reward/mean"] for r in steps_a] == [r["reward/mean"] for r in steps_b]
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    _finish(_start(out), out)
    return out


def test_sigkill_between_checkpoints_then_resume_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = _start(out)
    try:
        _wait_for(lambda: _steps_logged(out) >= 3, proc, "step 3")
    finally:
        _sigkill_run(proc)
    assert (out / "checkpoints" / "step_00000002" / "state.json").is_file()
    assert not (out / "checkpoints" / "step_00000004").exists()
    wandb_id = json.loads((out / "checkpoints" / "step_00000002" / "state.json").read_text())["wandb_id"]

    resumed = _start(out, "--resume", "auto")
    _finish(resumed, out)
    log = out.with_suffix(".log").read_text()
    assert "resumed from" in log and "step 2, policy version 2" in log
    _assert_same_run(uninterrupted, out)
    # The resumed run continues the same W&B run.
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(wandb_id) for name in runs)


def test_kill_while_writing_a_checkpoint_resumes_from_the_previous_one(uninterrupted, tmp_path):
    out = tmp_path / "killed_in_save"
    # Fault drill: the save of step 4 pauses between writing the learner state and its commit (the rename).
    proc = _start(out, env={"PERCEPTION_R1_CHECKPOINT_PAUSE": "4:600"})
    partial = out / "checkpoints" / ".step_00000004.partial"
    try:
        _wait_for(lambda: (partial / "state.json").is_file(), proc, "the step-4 checkpoint write")
    finally:
        _sigkill_run(proc)
    assert partial.is_dir() and not (out / "checkpoints" / "step_00000004").exists()
    assert (out / "checkpoints" / "step_00000002" / "state.json").is_file()

    resumed = _start(out, "--resume", "auto")
    _finish(resumed, out)
    assert "step 2, policy version 2" in out.with_suffix(".log").read_text()
    _assert_same_run(uninterrupted, out)
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000006"]
