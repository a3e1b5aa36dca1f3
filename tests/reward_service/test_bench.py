"""The benchmark's fast and plain implementations agree exactly on every workload (it raises otherwise)."""
from reward_service.bench import run


def test_bench_values_identical_on_small_workload():
    rows = run(n=40)
    assert {r["task"] for r in rows} == {"grounding", "counting", "ocr", "detection@10", "detection@50"}
    assert all(r["samples_per_s"] > 0 and 0 <= r["mean_reward"] for r in rows)
