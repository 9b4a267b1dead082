# The two commands a newcomer needs; each does its own set-up (scripts/setup.sh, idempotent).
PY := .venv/bin/python

MIN_VENV ?= .venv-min

.PHONY: setup train test test-all test-min lint

setup:
	@bash scripts/setup.sh

train: setup
	$(PY) -m mlm_lightning fit --config configs/base.yaml $(ARGS)

# The fast suite (under 3 minutes); test-all adds the slow end-to-end tests (@pytest.mark.slow), as CI runs it.
test: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: setup
	$(PY) -m pytest $(ARGS)

# The fast suite at the lowest versions pyproject.toml declares (scripts/lowest-versions.txt), in its own
# environment $(MIN_VENV); CI runs it after test-all.
test-min:
	@MLM_VENV=$(MIN_VENV) MLM_CONSTRAINTS=scripts/lowest-versions.txt bash scripts/setup.sh
	$(MIN_VENV)/bin/python -m pytest -m "not slow" $(ARGS)

lint: setup
	$(PY) -m ruff check mlm_lightning tests benchmarks
	$(PY) -m ruff format --check mlm_lightning tests benchmarks
	$(PY) -m mypy
