# kalora-kg — everything a fresh machine with Python 3.11 needs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
# A CPU wheel of torch 2.13.0 lies on the reference machines; an unpinned torch pulls a multi-GB
# CUDA build. Override for other machines, e.g. `make demo TORCH_SPEC='torch>=2.2'`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PYKEEN_HOME ?= $(CURDIR)/.pykeen
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/kalora run hpo

# Two pytest workers (pytest-xdist), whole files per worker so module fixtures are built once:
# much of the suite waits on subprocesses (Prefect servers, workers, PostgreSQL, Dask), which the
# second worker overlaps. `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .prefect .pykeen artifacts .pytest_cache
