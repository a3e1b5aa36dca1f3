"""Run checkpoints: every learner rank's ZeRO-3 state and RNG, and the driver's state, written atomically.

    <output_dir>/checkpoints/step_00000040/   learner/ (DeepSpeed, one part per rank), state.json
    <output_dir>/checkpoints/.step_00000060.partial/   a save in progress (or one a kill interrupted)

A save is written under a `.partial` name and renamed when complete: the rename is the commit, so a run killed
while saving leaves the previous checkpoint as the newest complete one. The driver's RNG-free design makes the
rest of the run a function of this state: sampling seeds derive from `train.seed` and the step, the prompt
sampler's position and RNG are saved, and the engines receive the restored weights before the first rollout.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("perception_r1")
# Fault drill for tests, "STEP:SECONDS": the save of that step pauses after the learner state is written and before
# the commit, so a test can kill the run while a checkpoint is half written.
PAUSE_ENV = "PERCEPTION_R1_CHECKPOINT_PAUSE"


@dataclass
class RunState:
    """What the driver needs to continue a run exactly where the checkpoint was taken."""

    step: int  # the last completed step
    version: int  # the policy version the learner holds
    sampler: dict  # PromptSampler.state()
    skipped: int  # samples skipped so far (counts toward data.max_bad_rows)
    eval_before: float  # held-out reward before training, for the closing line
    wandb_id: str | None
    headline_before: float | None = None  # the task's headline metric before training


def root(out_dir: Path) -> Path:
    """Where a run's checkpoints live: `<output_dir>/checkpoints`."""
    return Path(out_dir) / "checkpoints"


def save(services, state: RunState, out_dir: Path, keep: int) -> Path:
    """Write a checkpoint of `state` and every learner rank; keep the newest `keep` complete ones."""
    from orchestration.driver.services import get_learners

    final = root(out_dir) / f"step_{state.step:08d}"
    partial = root(out_dir) / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "learner").mkdir(parents=True)
    t0 = time.perf_counter()
    get_learners([learner.save.remote(str(partial / "learner")) for learner in services.learners])
    with open(partial / "state.json", "w") as f:
        json.dump(asdict(state), f)
        f.flush()
        os.fsync(f.fileno())
    pause_step, _, pause_s = os.environ.get(PAUSE_ENV, "").partition(":")
    if pause_step and int(pause_step) == state.step:
        time.sleep(float(pause_s))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)  # the commit
    for old in complete(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s written in %.1fs", final, time.perf_counter() - t0)
    return final


def complete(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    base = root(out_dir)
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob("step_*") if (p / "state.json").is_file())


def resolve(resume: str | None, out_dir: Path) -> Path | None:
    """`--resume`: None (fresh run), "auto" (the newest complete checkpoint, or a fresh run when there is none)
    or a checkpoint directory."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete(out_dir)
        if not found:
            log.info("--resume auto: no complete checkpoint under %s, starting fresh", root(out_dir))
            return None
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume {resume!r} is not a complete checkpoint (no state.json in it)")
    return path


def read_state(path: Path) -> RunState:
    """The driver's `RunState` saved in checkpoint `path`."""
    return RunState(**json.loads((Path(path) / "state.json").read_text()))


def restore(services, path: Path) -> None:
    """Load every learner rank's part of checkpoint `path`."""
    from orchestration.driver.services import get_learners

    get_learners([learner.load.remote(str(Path(path) / "learner")) for learner in services.learners])
