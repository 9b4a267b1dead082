# The two commands a newcomer needs; each does its own set-up (scripts/setup.sh, idempotent).
PY := .venv/bin/python

.PHONY: setup train test test-all lint

setup:
	@bash scripts/setup.sh

train: setup
	$(PY) -m mlm_lightning fit --config configs/base.yaml $(ARGS)

# The fast suite (under 3 minutes); test-all adds the slow end-to-end tests (@pytest.mark.slow), as CI runs it.
test: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	$(PY) -m ruff check mlm_lightning tests benchmarks
	$(PY) -m ruff format --check mlm_lightning tests benchmarks
