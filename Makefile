# make parity : the parity report on the built-in default models (the main job)
# make test   : the test suite (make test-fast: the quick tier)
# make gpu-check : every GPU measurement in one run, under 5 minutes (reports/gpu_check/);
#                  without .venv (the GPU machine): make gpu-check PY=python3
# Both create .venv and install what they need on a fresh machine; quick once set up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build (lies on this project's machines). GPU users: see README, "CUDA install".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: parity test test-fast bench clean setup gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[jax,torch,train,test]"
	touch $(STAMP)

parity: $(STAMP)
	$(PY) -m parity $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist), one test file per worker at a time:
# the files share compiled XLA programs and module-level fixtures within themselves.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile

# The full suite (what CI runs), its 15 slowest tests listed at the end.
test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) --durations=15 $(ARGS)

# The quick tier: everything but the tests marked `heavy` (full-suite XLA compiles,
# subprocess worlds, large children).
test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not heavy" $(ARGS)

# Sets up .venv like the others, except with PY=python3 (a machine whose system python has the packages).
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))
	$(PY) -m parity gpu-check $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
