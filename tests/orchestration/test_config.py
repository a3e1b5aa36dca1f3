"""Configs are validated at load; a bad key or value fails with its dotted name in the message."""
from pathlib import Path

import pytest

from orchestration.cli import main as cli_main
from orchestration.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_demo_config_loads_with_overrides():
    cfg = load_config(CONFIGS / "demo_cpu.yaml", ["learner.lr=1e-4", "grpo.loss_agg=token-mean"])
    assert cfg.learner.lr == 1e-4 and cfg.grpo.loss_agg == "token-mean"
    assert cfg.learner.num_ranks == 2 and cfg.grpo.group_size == 8


def test_unknown_key_in_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lr: 1.0e-6\n  learning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"learner\.learning_rate: Extra inputs are not permitted"):
        load_config(bad)


@pytest.mark.parametrize("override, named", [
    ("grpo.bta=0.1", "grpo.bta"),
    ("train.steps=many", "train.steps"),
    ("grpo.scale_rewards=sometimes", "grpo.scale_rewards"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("learner.dist_backend=nccl", "learner: Value error, learner.device=cpu needs dist_backend=gloo"),
    ("data.objects=[1, 1]", "data.objects applies to synthetic grounding and detection scenes"),
    ("data.distinct=attributes", "data.distinct applies to synthetic grounding scenes"),
])
def test_bad_override_is_named(override, named):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "demo_cpu.yaml", [override])
    assert named in str(info.value)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")


def test_a_batch_that_does_not_split_over_the_ranks_is_rejected():
    with pytest.raises(ConfigError, match=r"9 answers must split evenly over learner.num_ranks = 2"):
        load_config(None, ["train.prompts_per_step=3", "grpo.group_size=3"])
    load_config(None, ["train.prompts_per_step=3", "grpo.group_size=4", "learner.micro_batch_size=5"])  # 6 per rank


def test_cli_reports_bad_key_and_exits_2(capsys):
    code = cli_main(["train", "--config", str(CONFIGS / "demo_cpu.yaml"), "learner.lrr=1"])
    assert code == 2
    assert "learner.lrr" in capsys.readouterr().err


def test_a_config_extends_its_base_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("learner: {lr: 1.0e-4, num_ranks: 2}\ndata: {task: grounding}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nlearner: {lr: 5.0e-5}\n")
    cfg = load_config(tmp_path / "child.yaml", ["data.task=counting"])
    assert (cfg.learner.lr, cfg.learner.num_ranks, cfg.data.task) == (5e-5, 2, "counting")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml.*does not exist"):
        load_config(tmp_path / "orphan.yaml")


@pytest.mark.parametrize("demo", ["grounding", "grounding_referring", "counting", "ocr", "detection"])
def test_each_demo_task_config_extends_the_shared_perception_settings(demo):
    cfg = load_config(CONFIGS / f"demo_cpu_{demo}.yaml")
    shared = load_config(CONFIGS / "demo_cpu_perception.yaml")
    assert cfg.data.task == demo.split("_")[0] and cfg.sft.enabled and cfg.train.output_dir == f"outputs/demo_{demo}"
    assert cfg.model == shared.model and cfg.grpo.scale_rewards == "batch"


def test_objects_per_scene_is_a_range():
    assert load_config(CONFIGS / "demo_cpu_grounding.yaml").data.objects == (1, 1)  # the demo: one shape
    assert load_config(CONFIGS / "demo_cpu_grounding_referring.yaml").data.objects is None  # two or three
    with pytest.raises(ConfigError, match=r"data.objects must be \[least, most\].*got \[3, 1\]"):
        load_config(CONFIGS / "demo_cpu_grounding.yaml", ["data.objects=[3, 1]"])


@pytest.mark.parametrize("distinct", ["pair", "attributes"])
def test_grounding_scenes_distinct_by_pair_or_by_each_attribute(distinct):
    """'pair': no two shapes share colour and kind, and some names need both words; 'attributes': no two share
    either, so each word alone names the object. The default's scenes are the ones drawn before the option."""
    from orchestration.data.datasets import build_datasets

    cfg = load_config(CONFIGS / "demo_cpu_grounding_referring.yaml", [f"data.distinct={distinct}",
                                                                      "data.train_size=400", "data.eval_size=1"])
    train, _ = build_datasets(cfg.data)
    shared = 0
    for s in train:
        labels = [o["label"].split() for o in s.solution["scene"]]
        assert len({tuple(w) for w in labels}) == len(labels)
        colours, kinds = ({w[i] for w in labels} for i in (0, 1))
        shared += len(colours) < len(labels) or len(kinds) < len(labels)
    assert (shared > 100) if distinct == "pair" else shared == 0
    if distinct == "pair":
        assert train[0].question == "Output the bounding box of the blue triangle in the image."
        assert train[0].solution["box"] == [4.0, 7.0, 60.0, 63.0]
