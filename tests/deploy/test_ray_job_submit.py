"""`ray job submit` the way README.md tells a user: deploy/local_cluster.sh (loopback, token auth), then the README's
submit command with a CPU config. The cluster is stopped through the processes this test started, never with a bare
`ray stop` (that would end every Ray cluster on the machine)."""
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
STEPS = 3
OVERRIDES = [f"train.steps={STEPS}", "train.prompts_per_step=4", "learner.micro_batch_size=8", "data.train_size=64",
             "data.eval_size=8", "wandb.mode=offline", "train.export_final=false"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the `ray start --block` process and everything it started (GCS, raylet, dashboard,
    workers, the job's driver)."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def token_auth_cluster():
    """A head node on loopback with token auth, in its own temp dir and ports, as deploy/local_cluster.sh starts it."""
    venv_bin = str(Path(sys.executable).parent)  # `source .venv/bin/activate`, as the README says
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("WANDB_SERVICE", None)  # the job starts its own W&B service
    temp_dir = tempfile.mkdtemp(prefix="pr1-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    gcs, dash, client, agent = _free_ports(4)
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(
        ["bash", "deploy/local_cluster.sh", "--block", f"--temp-dir={temp_dir}", f"--port={gcs}",
         f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
         "--num-cpus=6"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            ok = subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True,
                                timeout=60).returncode == 0
            if ok:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come up:\n{(Path(temp_dir) / 'ray_start.log').read_text()}")
            time.sleep(2)
        yield env, address
    finally:
        _stop_tree(proc)
        log.close()


def _ray_job(env, command: str, address: str, job_id: str) -> str:
    out = subprocess.run(["ray", "job", command, "--address", address, job_id], env=env, capture_output=True,
                         text=True, timeout=60)
    return out.stdout + out.stderr


def test_readme_submit_command_runs_a_cpu_training_job(token_auth_cluster):
    env, address = token_auth_cluster
    job_id = f"pr1-test-{secrets.token_hex(4)}"
    submit = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".", "--",
         "python", "-m", "orchestration.train", "--config", "configs/demo_cpu.yaml", *OVERRIDES],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    status = _ray_job(env, "status", address, job_id)
    logs = _ray_job(env, "logs", address, job_id)
    assert f"job '{job_id}' succeeded" in status.lower(), f"job {job_id}: {status}\n{submit.stdout[-4000:]}\n{submit.stderr[-4000:]}"
    assert f"{STEPS}/{STEPS}" in logs, "the job's logs must show every GRPO step"
    assert "eval reward: before" in logs and "mean time per step" in logs
    # Token auth is really on: a client with the wrong token is turned away.
    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    assert subprocess.run(["ray", "job", "list", "--address", address], env=wrong, capture_output=True,
                          timeout=60).returncode != 0
