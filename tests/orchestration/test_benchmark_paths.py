"""The benchmarks find the configs they load from wherever they live in the package (a move into
orchestration/benchmarks/ once left them pointing at orchestration/configs/, and `make bench-train` failed at its
last figure after eight minutes)."""
from orchestration.benchmarks import bench_train, soak


def test_benchmark_configs_exist():
    assert bench_train.DEMO_CONFIG.is_file() and bench_train.DEMO_CONFIG.parent.name == "configs"
    assert soak.CONFIG.is_file() and soak.CONFIG == bench_train.DEMO_CONFIG
