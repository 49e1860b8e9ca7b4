# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test bench golden clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,examples]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m optadam.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Golden trajectories from the real TF 2.15 tf.keras.optimizers.Adam, written to tests/golden/
# (see tools/README.md). Needs a Python that TF 2.15 supports (3.9-3.11); override with TF_PYTHON=.
TF_PYTHON ?= $(PYTHON)
TF_VENV   := .venv-tf
TF_STAMP  := $(TF_VENV)/.installed-tf

$(TF_VENV)/bin/python:
	$(TF_PYTHON) -m venv $(TF_VENV)

$(TF_STAMP): | $(TF_VENV)/bin/python
	$(TF_VENV)/bin/python -m pip install -q 'tensorflow-cpu==2.15.1' 'numpy<2'
	touch $(TF_STAMP)

golden: $(TF_STAMP)
	$(TF_VENV)/bin/python tools/make_keras2_golden.py --out tests/golden

# Step-time benchmark of issue 8 (benchmarks/README.md): its own venv, with torch, Keras 3 and
# matplotlib; writes benchmarks/RESULTS.md and benchmarks/step_time.png. Options: BENCH_ARGS=--quick
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-bench

$(BENCH_VENV)/bin/python:
	$(PYTHON) -m venv $(BENCH_VENV)

$(BENCH_STAMP): pyproject.toml | $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m benchmarks.step $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python -m benchmarks.many_leaves
