# calib_lib: `make run` sets up and runs the main job, `make test` runs the tests.
# Both are idempotent: a second `make setup` only re-verifies the cached model (seconds).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.calib-installed
MODEL  ?= smollm2-135m

.PHONY: setup run test test-unit lab browser-check clean-venv

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/calib model prepare $(MODEL)

# The main job: every study notebook on the quick profile (executed notebooks + HTML in results/quick/,
# figures in figures/). Finished runs are kept in results/quick/runs/ (one file per run), so a rerun takes minutes.
PROFILE ?= quick
run: setup
	$(BIN)/calib study --profile $(PROFILE) --model $(MODEL)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

# JupyterLab on the project's venv (its kernel is the venv's python3), opened on the study notebooks.
# Jupyter refuses to run as root without --allow-root (containers often are root).
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# The interactive views in a real browser: headless Chromium opens the committed HTML and JupyterLab with the
# executed explore notebook, saves screenshots to figures/browser/, fails on an empty view or a JavaScript error.
# Needs Chromium (Debian: apt-get install chromium).
browser-check: $(STAMP)
	$(BIN)/python scripts/browser_check.py

clean-venv:
	rm -rf $(VENV)
