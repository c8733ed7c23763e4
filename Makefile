# petseg: `make demo` (offline pipeline on the synthetic set) and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages in dvc.yaml call `python`: make sure it is the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: install demo repro test lint format ui params-real clean

install: $(STAMP)

# Rebuilt when the pinned dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

## Offline demo: switch params.yaml to the synthetic preset, run every stage, point at the report.
demo: install
	python -m petseg.preset presets/demo.yaml
	dvc repro
	@echo "demo done: report in $(CURDIR)/report/index.html (and report/README.md)"
	@echo "params.yaml now holds the presets/demo.yaml values; 'make params-real' restores the real-data defaults"

## Whatever params.yaml says now (real data by default).
repro: install
	dvc repro

test: install lint
	pytest

lint: install
	ruff check .
	ruff format --check .

format: install
	ruff check --fix .
	ruff format .

ui: install
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port 5000

params-real:
	git checkout -- params.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
