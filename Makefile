# Two commands for a fresh machine (Debian, Python 3.11, no GPU):
#   make demo   -> environment + synthetic trial + workflow to the finished report
#   make test   -> environment + the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2

.PHONY: demo test env env-test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# One lock file pins everything, every transitive dependency included, so nothing is
# resolved: --no-deps installs exactly the lock. That is also how the lock leaves out
# deepbet's GUI dependency (customtkinter), which the library call never imports
# (`pip check` names only that one).
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Optional Keras backend used by the tests (CPU wheel; pinned in pyproject's `torch` extra).
$(VENV)/.installed-torch: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet torch==2.13.0
	touch $@

env: $(VENV)/.installed

env-test: $(VENV)/.installed-torch

demo: env
	$(BIN)/snakemake --cores $(CORES)
	mkdir -p results/report
	$(BIN)/snakemake --cores $(CORES) --report results/report/report.html
	@echo "Report: results/report/report.html"

test: env-test
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: env
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

clean:
	rm -rf results .snakemake
