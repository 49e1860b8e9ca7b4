# The two commands of the README: `make demo` and `make test`. Each creates .venv if it is missing
# and installs the versions pinned in requirements/constraints.txt (`make lock` regenerates it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
CONSTRAINTS := requirements/constraints.txt

.PHONY: demo test test-random lint dist lock test-latest test-min bench golden docs keras-files clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[dev,examples]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Two pytest-xdist workers, a test file each at a time (module fixtures stay in one process).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The randomized differential suite at a larger size (make test runs 40 cases of each kind).
RANDOM_CASES ?= 1000
test-random: $(STAMP)
	OPTADAM_RANDOM_CASES=$(RANDOM_CASES) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) \
	  tests/integration/test_random_configs.py

# ruff (rules and format) over the tree, mypy over optadam/ (both configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# sdist and wheel in dist/, built with the pinned setuptools of .venv (no download, no isolation).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .

# Regenerate the pins from a clean install of today's newest versions, in a throwaway venv.
# LOCK_EXTRA: packages to pin beyond the extras (none today).
LOCK_VENV  := .venv-lock
LOCK_EXTRA ?=
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev,examples,docs,keras-files]' $(LOCK_EXTRA)
	{ echo "# Pins for \`make test\` and \`make demo\` ($$($(LOCK_VENV)/bin/python -V)); regenerate: make lock"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

# The whole suite on the newest versions the registry serves today (no pins), in .venv-latest.
LATEST_VENV := .venv-latest
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q -U -e '.[dev,examples]'
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|optax|chex|numpy|keras|flax) '
	$(LATEST_VENV)/bin/python -m pytest -q tests

# The core suite at exactly the floor pyproject.toml declares (jax, jaxlib, optax, chex, numpy, and
# the dev extra's pytest, hypothesis and keras), in .venv-min, on MIN_PYTHON (default: $(PYTHON)).
MIN_PYTHON ?= $(PYTHON)
MIN_VENV   := .venv-min
MIN_STAMP  := $(MIN_VENV)/.installed-min
CORE_TESTS := tests/test_alias.py tests/test_alias_parity.py tests/test_chain.py tests/test_config.py \
  tests/test_scale.py tests/test_learning_rate.py tests/test_hyperparams.py tests/test_clipping.py \
  tests/test_weight_decay.py tests/test_ema.py tests/test_readers.py tests/test_keras3.py \
  tests/test_keras_config.py tests/test_keras_state.py tests/test_sparse.py tests/test_schedules.py \
  tests/integration/test_golden.py
# Left out: flax (not a core dep), and the grouping and loss-scaling tests in those files.
CORE_DESELECT := tests/test_sparse.py::test_flax_embedding_model_trains_like_dense \
  tests/test_clipping.py::test_segment_sums_of_squares_match_each_leaf \
  tests/test_clipping.py::test_clipnorm_groups_tiny_leaves_apart \
  tests/test_readers.py::test_loss_scale_and_scale_loss_in_nested_wrappers \
  tests/test_readers.py::test_scale_loss_inside_grad_gives_the_scaled_gradient

$(MIN_STAMP): pyproject.toml tools/min_requirements.py
	rm -rf $(MIN_VENV)
	$(MIN_PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q 'tomli; python_version < "3.11"'
	$(MIN_VENV)/bin/python tools/min_requirements.py pytest hypothesis keras > $(MIN_VENV)/requirements-min.txt
	$(MIN_VENV)/bin/python -m pip install -q -r $(MIN_VENV)/requirements-min.txt -e .
	$(MIN_VENV)/bin/python -m pip check
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|optax|chex|numpy|keras) '
	$(MIN_VENV)/bin/python -m pytest -q $(CORE_TESTS) $(addprefix --deselect ,$(CORE_DESELECT))

clean:
	rm -rf $(VENV) $(MIN_VENV) $(LATEST_VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info docs/_build docs/notebooks

# The documentation site (docs/, Sphinx + MyST + myst-nb): the [docs] extra in .venv, then
# docs/_build/html with warnings as errors. Open docs/_build/html/index.html.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

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
	$(TF_VENV)/bin/python tools/make_loss_scale_golden.py --out tests/golden

# Saved model files of TF 2.15 (.keras, .h5) and Keras 3 (.keras) with their continuation runs,
# written to tests/fixtures/keras_files/ (see tools/README.md): TF's venv, then the dev venv.
keras-files: $(TF_STAMP) $(STAMP)
	$(TF_VENV)/bin/python tools/make_keras_files.py --out tests/fixtures/keras_files
	$(BIN)/python tools/make_keras_files.py --out tests/fixtures/keras_files

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
	$(BENCH_VENV)/bin/python -m benchmarks.loss_scale
