# perception-r1: every target creates the environment first when it is missing (make setup).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
TASK   ?= colour
ARGS   ?=

.PHONY: setup setup-gpu test train-demo train-coco bench clean

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
	$(PY) -m orchestration.train --config configs/demo_cpu.yaml data.task=$(TASK) $(ARGS)

train-coco: setup-gpu
	$(PY) -m orchestration.train --config configs/coco_det.yaml $(ARGS)

clean:
	rm -rf outputs .pytest_cache
