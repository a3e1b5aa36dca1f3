# perception-r1: every target creates the environment first when it is missing (make setup).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
TASK   ?= colour
ARGS   ?=
# TASK=colour is the learnable demo; the four perception tasks share demo_cpu_perception.yaml.
DEMO_CONFIG = $(if $(filter colour,$(TASK)),configs/demo_cpu.yaml,configs/demo_cpu_perception.yaml data.task=$(TASK) train.output_dir=outputs/demo_$(TASK))

.PHONY: setup setup-gpu test train-demo train-coco eval bench clean

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

train-demo: setup
	$(PY) -m orchestration.train --config $(DEMO_CONFIG) $(ARGS)

# make eval CONFIG=configs/demo_cpu.yaml CHECKPOINT=outputs/demo/final
eval: setup
	$(PY) -m orchestration.cli eval --config $(CONFIG) --checkpoint $(CHECKPOINT) $(ARGS)

train-coco: setup-gpu
	$(PY) -m orchestration.train --config configs/coco_det.yaml $(ARGS)

bench: setup
	$(PY) -m reward_service.bench

clean:
	rm -rf outputs .pytest_cache
