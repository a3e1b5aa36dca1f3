"""The supervised warm start: it learns the answers, is deterministic by seed, and is built once per settings."""
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestration.config import load_config
from orchestration.warmstart.sft import cache_key, lr_factor, run_sft, warm_start
from orchestration.warmstart.sft import Snapshot, past_window, prepare_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_cpu_perception.yaml"


@pytest.mark.learning
def test_warm_start_learns_is_deterministic_and_cached(tmp_path):
    over = ["sft.steps=40", "sft.batch_size=8", "data.train_size=64", "data.eval_size=4", "sft.threads=1",
            f"sft.output_dir={tmp_path / 'sft'}"]
    cfg = load_config(CONFIG, over)
    base = prepare_model(cfg, tmp_path, warm=False)

    first = Path(warm_start(cfg, base))
    info = json.loads((first / "sft.json").read_text())
    assert first.parent == tmp_path / "sft" and first.name.startswith("grounding-")
    assert info["steps"] == 40 and info["final_loss"] < 0.7 * info["first_loss"], info
    assert first.name == f"grounding-{info['key']}" == f"grounding-{cache_key(cfg, base)}", info

    # Same settings: the cached checkpoint comes back untouched, nothing is trained again.
    stamp = (first / "sft.json").stat().st_mtime_ns
    assert Path(warm_start(cfg, base)) == first and (first / "sft.json").stat().st_mtime_ns == stamp

    # Same seed, trained again elsewhere: the very same weights.
    again = run_sft(cfg, base, tmp_path / "again")
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Another seed is another cache entry.
    other = Path(warm_start(load_config(CONFIG, over + ["sft.seed=1"]), base))
    assert other != first and other.parent == first.parent


def test_vision_lr_scale_zero_freezes_the_vision_tower_while_the_language_model_learns(tmp_path):
    """`sft.vision_lr_scale: 0` (here with the `thinking` scene description): the vision tower's weights come out
    exactly as they went in, the language model's change, and the cache key differs."""
    over = ["sft.steps=6", "sft.batch_size=4", "data.train_size=16", "data.eval_size=4", "sft.threads=1",
            "reward.options.thinking=true", f"sft.output_dir={tmp_path / 'sft'}"]
    cfg = load_config(CONFIG, over + ["sft.vision_lr_scale=0"])
    base = prepare_model(cfg, tmp_path, warm=False)
    out = run_sft(cfg, base, tmp_path / "frozen")
    before, after = load_file(Path(base) / "model.safetensors"), load_file(out / "model.safetensors")
    visual = [k for k in before if ".visual." in f".{k}"]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in visual)
    assert cache_key(cfg, base) != cache_key(load_config(CONFIG, over), base)


def test_the_cache_key_follows_what_is_taught(tmp_path):
    """The key reads the prompts and answers the warm start would teach, so the thinking layout and the box
    convention (reward options, no settings part of the key) each make a new warm start, while a setting that only
    GRPO reads, or where the cache lives, keeps the cached one."""
    over = ["data.train_size=64", "data.eval_size=4", f"sft.output_dir={tmp_path / 'sft'}"]
    cfg = load_config(CONFIG, over)
    base = prepare_model(cfg, tmp_path, warm=False)
    key = cache_key(cfg, base)
    assert cache_key(load_config(CONFIG, over + ["grpo.beta=0.1", "train.steps=7", "learner.lr=1e-3"]), base) == key
    assert cache_key(load_config(CONFIG, over + [f"sft.output_dir={tmp_path / 'moved'}"]), base) == key
    changed = [cache_key(load_config(CONFIG, over + [o]), base)
               for o in ("reward.options.thinking=true", "reward.options.box_convention=qwen2vl", "sft.seed=3")]
    assert len({key, *changed}) == 4


def test_a_target_stops_the_warm_start_at_the_first_probe_that_reaches_it(tmp_path, caplog):
    """`sft.target`: probes on held-out training samples decide when to stop; sft.json records each probe, the
    step it stopped at and whether the target was reached; the target is part of the cache key."""
    over = ["sft.batch_size=4", "data.train_size=24", "data.eval_size=4", "sft.threads=1", "sft.probe_size=8",
            "sft.probe_every=2", "sft.ema=0.9", "rollout.max_new_tokens=8", f"sft.output_dir={tmp_path / 'sft'}"]
    cfg = load_config(CONFIG, over + ["sft.target=0.0", "sft.steps=50"])
    base = prepare_model(cfg, tmp_path, warm=False)
    with caplog.at_level(logging.INFO, logger="perception_r1"):
        out = Path(warm_start(cfg, base))
    info = json.loads((out / "sft.json").read_text())
    # Far from the target (every value reaches 0.0): the first probe comes after 4 x probe_every steps, and stops.
    assert info["steps"] == 8 and info["reached"] is True and info["target"] == {"acc@0.5": 0.0}, info
    assert [p["step"] for p in info["probes"]] == [8] and 0.0 <= info["probes"][0]["acc@0.5"] <= 1.0
    assert "probe acc@0.5" in caplog.text and "reaches target 0.000 at step 8" in caplog.text

    # Out of reach: it stops at the cap, says so, and probes the cap itself.
    capped = load_config(CONFIG, over + ["sft.target=1.0", "sft.steps=10"])
    assert cache_key(capped, base) != cache_key(cfg, base)
    info = json.loads((run_sft(capped, base, tmp_path / "capped") / "sft.json").read_text())
    assert info["steps"] == 10 and info["reached"] is False
    assert [p["step"] for p in info["probes"]] == [8, 10]
    assert "has not reached target 1.000 at step 10 (of at most 10" in caplog.text


def test_the_probe_set_must_leave_training_samples(tmp_path):
    cfg = load_config(CONFIG, ["data.train_size=8", "sft.probe_size=8", "sft.target=0.5",
                               f"sft.output_dir={tmp_path / 'sft'}"])
    base = prepare_model(cfg, tmp_path, warm=False)
    with pytest.raises(ValueError, match=r"sft.probe_size=8 leaves no training sample of the 8"):
        run_sft(cfg, base, tmp_path / "out")


def test_the_learning_rate_decays_to_zero_at_the_step_count_or_stays_constant_with_a_target():
    assert lr_factor(0, 10, 100, decay=True) == pytest.approx(0.1)
    assert lr_factor(50, 10, 100, decay=True) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, decay=True) == pytest.approx(0.0)
    assert [lr_factor(i, 10, 100, decay=False) for i in (0, 9, 50, 99)] == pytest.approx([0.1, 1.0, 1.0, 1.0])


def test_the_window_past_the_target_follows_the_metric_direction():
    """`sft.tolerance`: a probe more than the tolerance better than the target is past the window (above it for
    Acc@0.5, below it for OCR's edit distance); one at the edge, 520 of 1,000 scenes at 0.5 + 0.02, is in it."""
    assert past_window("acc@0.5", 0.521, 0.5, 0.02) and not past_window("acc@0.5", 520 / 1000, 0.5, 0.02)
    assert not past_window("acc@0.5", 0.3, 0.5, 0.02)
    assert past_window("edit_distance", 0.1, 0.3, 0.05) and not past_window("edit_distance", 0.26, 0.3, 0.05)
    assert not past_window("edit_distance", 0.5, 0.3, 0.05)


def test_a_snapshot_returns_weights_and_adam_state_exactly_and_survives_a_second_return():
    """The return of `sft.tolerance`: after more updates, `restore` gives back the snapshot's weights and AdamW
    moments bit for bit, and, since the optimizer got clones, a second return after further updates does too."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def update(n):
        for _ in range(n):
            optimizer.zero_grad()
            model(torch.randn(8, 6)).pow(2).mean().backward()
            optimizer.step()

    update(3)
    snap = Snapshot(3, model, optimizer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [optimizer.state[p]["exp_avg_sq"].clone() for p in model.parameters()]
    for _ in range(2):
        update(5)
        assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())
        snap.restore(model, optimizer)
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
        assert all(torch.equal(m, optimizer.state[p]["exp_avg_sq"]) for m, p in zip(moments, model.parameters()))
        assert int(optimizer.state[next(model.parameters())]["step"]) == 3
