# calib_lib: `make run` sets up and runs the main job, `make test` runs the tests.
# Both are idempotent: a second `make setup` only re-verifies the cached model (seconds).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.calib-installed
MODEL  ?= smollm2-135m

.PHONY: setup run test test-unit clean-venv

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/calib model prepare $(MODEL)

# The main job: load the embedded default model and evaluate it (the study notebooks join here).
run: setup
	$(BIN)/calib model info $(MODEL)
	$(BIN)/calib ppl --model $(MODEL) --text $$( [ -n "$$CALIB_MIRROR" ] && echo wikitext2 || echo wikipedia ) --windows 32 --seq-len 512

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

clean-venv:
	rm -rf $(VENV)
