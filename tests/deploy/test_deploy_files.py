"""The shipped cluster recipes, checked where this machine cannot run them (no Docker engine, no Kubernetes): the
image installs the GPU path with the project's own Makefile on a CUDA 13 devel base, and the RayJob gives its
driver the data and the model, one shared run directory on every pod, enough GPUs and token authentication."""
import shlex
from pathlib import Path

import yaml

from orchestration.config import load_config
from orchestration.driver.services import required_resources

REPO = Path(__file__).resolve().parents[2]


def test_the_image_builds_the_gpu_path_with_the_makefile_on_a_cuda13_devel_base():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert base.startswith("nvidia/cuda:13.") and "devel" in base  # nvcc, and gcc for Triton's launcher
    assert "build-essential" in text and "python3.12-dev" in text  # a C compiler and the Python headers
    assert "RUN make setup-gpu" in text and "driver 580" in text
    makefile = (REPO / "Makefile").read_text()
    assert 'pip install --quiet -e ".[gpu,test]"' in makefile.split("setup-gpu:")[1].split("\n\n")[0]


def _containers(job: dict) -> dict[str, dict]:
    spec = job["spec"]
    pods = {"head": spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
            "submitter": spec["submitterPodTemplate"]["spec"]}
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return {name: pod["containers"][0] for name, pod in pods.items()}


def test_the_rayjob_shares_storage_with_its_driver_and_authenticates_every_pod():
    job = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "orchestration.train", "--config"]
    overrides = [a for a in argv[5:] if "=" in a]
    cfg = load_config(REPO / argv[4], overrides)  # the entrypoint's config validates, with every path set
    containers = _containers(job)
    for name in ("head", "gpu"):
        mounts = {m["mountPath"] for m in containers[name]["volumeMounts"]}
        for path in (cfg.train.output_dir, cfg.model.path, cfg.sft.output_dir, cfg.data.train.file,
                     cfg.data.eval.image_dir):
            assert Path(path).is_absolute() and any(path.startswith(m + "/") for m in mounts), (name, path)
    for name, container in containers.items():
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ray-auth-token", "key": "token"}, name
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) * g["replicas"]
               for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert required_resources(cfg)["GPU"] <= gpus


def test_the_local_cluster_script_turns_token_auth_on():
    assert "export RAY_AUTH_MODE=token" in (REPO / "deploy" / "local_cluster.sh").read_text()
