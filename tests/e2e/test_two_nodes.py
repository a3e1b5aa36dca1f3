"""The cluster path on two Ray nodes of this machine: a head (the driver's node, with the engine and reward actors)
and a second node started with `ray start --address` from another working directory and its own temp dir, which
alone offers the `learner_node` resource the learner ranks ask for (`learner.ray_resources`). Token auth on both.

- With one shared `train.output_dir`, a checkpoint holds both ranks' ZeRO-3 shards and is committed; a driver
  SIGKILLed between checkpoints resumes with --resume auto to bitwise the weights of a run never interrupted.
- A relative `train.output_dir` fails at start, before any actor, naming the path.
- An output directory the learner node does not share (the second node in its own mount namespace, a tmpfs over
  the directory: what a node-local disk looks like) fails at start, naming the path and the node.

Every cluster is stopped through the processes this test started, never with a bare `ray stop`.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.deploy.test_ray_job_submit import _free_ports, _stop_tree
from tests.e2e.test_resume import ARGS, STEPS, _assert_same_run, _sigkill_run, _steps_logged, _wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")]
REPO = Path(__file__).resolve().parents[2]
ON_NODE_2 = ["learner.ray_resources={learner_node: 1}", "ray.setup_timeout_s=300"]


@contextmanager
def two_nodes(tmp: Path, unshared: Path | None = None):
    """A head and a second node; with `unshared`, the second node sees an empty tmpfs at that path."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "WANDB_SERVICE"):
        env.pop(key, None)
    gcs, = _free_ports(1)
    procs = []
    try:
        head_tmp = tempfile.mkdtemp(prefix="pr1h-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
        procs.append(subprocess.Popen(
            ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             f"--temp-dir={head_tmp}", "--num-cpus=3", "--include-dashboard=false", "--disable-usage-stats"],
            cwd=REPO, env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        _wait_until(lambda: _ray_ok(env, gcs, "CPU"), "the head node")
        node_tmp, node_cwd = tempfile.mkdtemp(prefix="pr1w-", dir="/tmp"), tmp / "node2_cwd"
        node_cwd.mkdir()
        start = ["ray", "start", "--block", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                 f"--temp-dir={node_tmp}", "--num-cpus=2", '--resources={"learner_node": 2}', "--disable-usage-stats"]
        if unshared is not None:  # its own mount namespace: an empty tmpfs where the driver's directory is
            start = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f"mount -t tmpfs tmpfs {shlex.quote(str(unshared))} && exec {shlex.join(start)}"]
        procs.append(subprocess.Popen(start, cwd=node_cwd, env=env, stdout=open(tmp / "node2.log", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        _wait_until(lambda: _ray_ok(env, gcs, "learner_node"), "the second node")
        yield f"127.0.0.1:{gcs}", env, node_cwd
    finally:
        for proc in reversed(procs):
            _stop_tree(proc)


def _ray_ok(env: dict, gcs: int, resource: str) -> bool:
    probe = (f"import ray; ray.init(address='127.0.0.1:{gcs}', logging_level='ERROR'); "
             f"assert ray.cluster_resources().get('{resource}', 0) > 0")
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0


def _wait_until(ok, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _run(address: str, env: dict, out: str | Path, log: Path, *extra: str) -> subprocess.Popen:
    """The train command as a user runs it, joining the cluster at `address`, its output appended to `log`."""
    return subprocess.Popen([sys.executable, "-m", "orchestration.train", *ARGS, f"train.output_dir={out}",
                             f"ray.address={address}", *ON_NODE_2, *extra], cwd=REPO, env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def test_checkpoints_commit_on_shared_storage_and_a_killed_driver_resumes_exactly(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    with two_nodes(tmp_path) as (address, env, node_cwd):
        whole, logs = shared / "uninterrupted", tmp_path / "logs"
        logs.mkdir()
        assert _run(address, env, whole, logs / "whole.log").wait(timeout=900) == 0, (logs / "whole.log").read_text()
        # The learner ranks ran on the second node, from its own working directory.
        placed = re.findall(r"learner rank (\d) on node (\w+) \(working directory (\S+)\)",
                            (logs / "whole.log").read_text())
        assert sorted(r for r, _, _ in placed) == ["0", "1"] and {cwd for _, _, cwd in placed} == {str(node_cwd)}
        # Each checkpoint holds both ranks' shards, committed under its final name.
        shards = sorted(p.name for p in (whole / "checkpoints" / f"step_{STEPS:08d}" / "learner" / "zero3").glob(
            "*optim_states.pt"))
        assert len(shards) == 2 and "rank_0" in shards[0] and "rank_1" in shards[1], shards
        assert not list((whole / "checkpoints").glob(".*.partial"))

        killed = shared / "killed"
        proc = _run(address, env, killed, logs / "killed.log")
        try:
            _wait_for(lambda: _steps_logged(killed) >= 3, proc, "step 3", timeout_s=600)
        finally:
            _sigkill_run(proc)
        assert (killed / "checkpoints" / "step_00000002" / "state.json").is_file()
        resumed = _run(address, env, killed, logs / "killed.log", "--resume", "auto")
        assert resumed.wait(timeout=900) == 0, (logs / "killed.log").read_text()[-3000:]
        assert "step 2, policy version 2" in (logs / "killed.log").read_text()
        _assert_same_run(whole, killed)

        # A relative output directory: every node would resolve it in its own working directory.
        t0 = time.monotonic()
        rel = _run(address, env, "outputs/relative-run", logs / "relative.log")
        assert rel.wait(timeout=120) != 0 and time.monotonic() - t0 < 60
        log = (logs / "relative.log").read_text()
        assert "train.output_dir 'outputs/relative-run' is relative, on a Ray cluster of 2 nodes" in log, log[-2000:]


def test_an_output_directory_the_learner_node_does_not_share_fails_at_start(tmp_path):
    shared = tmp_path / "not_shared"
    shared.mkdir()
    with two_nodes(tmp_path, unshared=shared) as (address, env, _):
        out = shared / "run"
        t0 = time.monotonic()
        proc = _run(address, env, out, tmp_path / "run.log")
        assert proc.wait(timeout=300) != 0
        log = (tmp_path / "run.log").read_text()
        assert f"train.output_dir '{out}' on node " in log and "is not the driver's" in log, log[-3000:]
        assert "does not exist" in log and time.monotonic() - t0 < 120
