# make setup | test | lint | study-smoke | study | publish | nbval-refs | benchmarks
# Everything runs from the repo's own venv (.venv); only python3 (>= 3.10) is needed beforehand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned, so that pip does not resolve a multi-GB CUDA build as a
# dependency (on the study's machines `torch==2.13.0` is the CPU wheel on disk). Other machines
# may pass a wheel index: make setup TORCH_ARGS="--index-url <your torch wheel index>"
TORCH_ARGS ?=
DATA ?= ../shared/fer2013/archive.zip

.PHONY: setup test lint study-smoke study publish nbval-refs benchmarks

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0 $(TORCH_ARGS)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

# Unit tests (real-data tests skip without FER-2013), then the notebooks against their nbval references.
test: setup
	$(BIN)/pytest
	$(BIN)/pytest --nbval-lax tests/nbval

# ruff: pyflakes and pycodestyle (pyproject.toml [tool.ruff]) over the package, tests, benchmarks and notebooks.
lint: setup
	$(BIN)/ruff check .

# All five notebooks, smoke-sized: on FER-2013 when $(DATA) exists, else on synthetic faces (it says so loudly).
# Its report, runs/reports/smoke-*/, is scratch: each run replaces the last.
study-smoke: setup
	$(BIN)/fer study --profile smoke $(if $(wildcard $(DATA)),--data $(DATA),) --overwrite

# The full study on FER-2013 in your own run folder, runs/reports/full-real/: started, or continued where it
# stopped (its finished notebooks and epochs are kept). It never touches the committed reports/.
study: setup
	@test -f "$(DATA)" || { echo "FER-2013 not found at $(DATA); make study DATA=path/to/archive.zip"; exit 1; }
	$(BIN)/fer study --profile full --data $(DATA) --resume

# The same, into the committed reports/full-real/ (FER-2013's faces left out): the study's published copy.
publish: setup
	@test -f "$(DATA)" || { echo "FER-2013 not found at $(DATA); make publish DATA=path/to/archive.zip"; exit 1; }
	$(BIN)/fer study --profile full --data $(DATA) --publish --resume

# Re-execute the notebooks (smoke, synthetic) into tests/nbval/ after changing a notebook.
nbval-refs: setup
	$(BIN)/fer study --nbval-refs

benchmarks: setup
	@set -e; for b in $(sort $(wildcard benchmarks/*.py)); do echo "== $$b"; $(BIN)/python $$b; done
