# The two commands a newcomer needs; each does its own set-up (scripts/setup.sh, idempotent).
PY := .venv/bin/python

.PHONY: setup train test lint

setup:
	@bash scripts/setup.sh

train: setup
	$(PY) -m mlm_lightning fit --config configs/base.yaml $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	$(PY) -m ruff check mlm_lightning tests benchmarks
	$(PY) -m ruff format --check mlm_lightning tests benchmarks
