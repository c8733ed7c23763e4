# petseg: `make demo` (offline pipeline on the synthetic set) and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages in dvc.yaml call `python`: make sure it is the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: help install vega-js storage demo real repro sweep compare transfer plots predict test test-fast lint format ui clean

## Every target with one line (this list).
help:
	@awk '/^## /{if (!doc) doc = substr($$0, 4); next} /^[a-z][a-z-]*:/{if (doc) printf "  %-10s %s\n", substr($$1, 1, length($$1) - 1), doc; doc = ""; next} /^$$/{doc = ""}' $(MAKEFILE_LIST)

## The venv (.venv, pinned dependencies), the offline Vega scripts and the DVC remote folder.
install: $(STAMP) vega-js storage

# Rebuilt when the pinned dependencies change.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

# Vega, Vega-Lite and vega-embed for `make plots`: DVC's plots page loads them from a CDN, which an
# offline machine can't reach. Pinned to the majors DVC's templates are written for; `npm pack`
# fetches only the three tarballs (no dependency tree) and checks them against the registry's hash.
VEGA_JS    := build/vega-js
VEGA_PKGS  := vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
PLOTS_OUT  := dvc_plots

## Vega, Vega-Lite and vega-embed from the npm registry for `make plots` (skipped without npm).
vega-js: $(VEGA_JS)/.fetched

# Without npm the demo and the tests still work: `make plots` and its browser test then say what is
# missing (the stamp is not written, so the next `make install` tries again).
$(VEGA_JS)/.fetched: Makefile
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "note: npm not found: skipped the Vega scripts that 'make plots' needs (install Node.js)"; \
		exit 0; \
	fi; \
	rm -rf $(VEGA_JS) && mkdir -p $(VEGA_JS) && \
	cd $(VEGA_JS) && npm pack --silent $(VEGA_PKGS) >/dev/null && \
	for pkg in $(VEGA_PKGS); do \
		name=$${pkg%@*}; tar -xzf $$name-$${pkg#*@}.tgz -O package/build/$$name.min.js > $$name.min.js; \
	done && rm -f *.tgz && touch .fetched

# The default DVC remote of .dvc/config: a folder beside the repository (`dvc remote add -d` points
# elsewhere; then this folder is simply unused).
STORAGE := $(abspath $(CURDIR)/../petseg-dvc-storage)

## The DVC remote folder beside the repository (.dvc/config's default remote "storage").
storage:
	@mkdir -p $(STORAGE)

## Offline demo: the committed params.yaml (synthetic set); what the remote holds is pulled, the rest runs.
demo: install
	dvc repro --pull
	@echo "demo done: report in $(CURDIR)/report/index.html (and report/README.md)"

## The real Oxford-IIIT Pet recipe (presets/real.yaml) as the DVC experiment NAME (default: real).
NAME ?= real
real: install
	python -m petseg.preset presets/real.yaml --exp-run -n $(NAME)

## Whatever params.yaml says now (dvc repro).
repro: install
	dvc repro

## The regularization sweep as queued DVC experiments, JOBS at a time (README: Experiments).
## The grid runs on top of the workspace params; results go into plots/experiments.csv, then the
## report.
## e.g. make sweep SEEDS="0 1 2" JOBS=2 SWEEP_ARGS="-S train.epochs=5"
SEEDS      ?= 0
JOBS       ?= 2
SWEEP_ARGS ?=
sweep: install
	python -m petseg.sweep run --seeds $(SEEDS) -j $(JOBS) $(SWEEP_ARGS)
	dvc repro

## The comparison over training seeds SEEDS, one queued DVC experiment each (README: Experiments).
## params.yaml's recipe as it is, collected into plots/seeds.csv and plots/seed_diffs.csv, then
## the report's "Across seeds" section. e.g. make compare SEEDS="0 1 2" JOBS=1
COMPARE_ARGS ?=
compare: install
	python -m petseg.sweep compare --seeds $(SEEDS) -j $(JOBS) $(COMPARE_ARGS)
	dvc repro

## From scratch vs pretrained (README, Pretrained encoders): the networks of models.unet once per
## encoder and starting weights (ImageNet or random), queued DVC experiments, collected into
## plots/transfer.csv, then the report's section. e.g. make transfer TRANSFER_ARGS="--inits random"
TRANSFER_ARGS ?=
transfer: install
	python -m petseg.sweep transfer --seeds $(SEEDS) -j $(JOBS) $(TRANSFER_ARGS)
	dvc repro

## The DVC plots as a page that works offline: .dvc/plots/offline.html loads the scripts from js/.
plots: install
	@test -f $(VEGA_JS)/.fetched || { echo "error: $(VEGA_JS) has no Vega scripts: install Node.js (npm), then make install" >&2; exit 1; }
	rm -rf $(PLOTS_OUT)
	dvc plots show --html-template .dvc/plots/offline.html -o $(PLOTS_OUT)
	mkdir -p $(PLOTS_OUT)/js && cp $(VEGA_JS)/*.min.js $(PLOTS_OUT)/js/
	@echo "plots: $(CURDIR)/$(PLOTS_OUT)/index.html"

## Segment your own photos (README, Use a trained network): files, folders or quoted globs.
## e.g. make predict IMAGES="photo.jpg shots/ 'more/*.png'" MODEL=models/unpool.pt OUT=preds
MODEL        ?= models/unet.pt
OUT          ?= predictions
PREDICT_ARGS ?=
predict: install
	@test -n "$(IMAGES)" || { echo "error: say which photos: make predict IMAGES='photo.jpg folder/' (MODEL=$(MODEL), OUT=$(OUT))" >&2; exit 2; }
	python -m petseg.predict --model $(MODEL) --out $(OUT) $(PREDICT_ARGS) $(IMAGES)

## Every test (what CI runs), the slowest listed at the end.
test: install lint
	pytest --durations=15

## The edit loop: everything but the whole-pipeline, DVC, browser and long training tests (slow).
test-fast: install lint
	pytest -m "not slow" --durations=15

## Ruff lint and format check (part of test and test-fast).
lint: install
	ruff check .
	ruff format --check .

## Fix what ruff can and reformat.
format: install
	ruff check --fix .
	ruff format .

## The MLflow UI over the project's store on http://127.0.0.1:5000.
ui: install
	@python -c 'from petseg import config, tracking; name = config.load_section("params.yaml", "tracking").experiment; print("open", tracking.ui_url("http://127.0.0.1:5000", name))'
	mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port 5000

## Remove the venv, caches and rendered plots (never data, models or the MLflow store).
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(VEGA_JS) $(PLOTS_OUT)
