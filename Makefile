# The two-command quick start: `make run` and `make test`.
# Both create .venv and install the pinned dependencies on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
WORKDIR ?= workdir/quickstart
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint bench clean wheel

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev,peers,plots]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## Quick start: fetch SmolLM2-135M (once) and run configs/quickstart.py.
run: $(STAMP)
	$(PY) -m experiments.run --config=configs/quickstart.py --workdir=$(WORKDIR)

## All tests, including the real-model ones marked slow (CI runs this): two xdist workers,
## one test file per worker at a time, sharing the on-disk XLA compilation cache.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=20 $(PYTEST_ARGS)

## Tests without the ones marked slow (real models, minutes): the inner loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

## Lint (rules in pyproject.toml [tool.ruff.lint]).
lint: $(STAMP)
	$(PY) -m ruff check specjax experiments tests configs notebooks

## A wheel of the library (dist/), e.g. to upload to Colab for the notebooks.
wheel: $(STAMP)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) workdir .pytest_cache dist build
