# Two commands for a fresh machine (Debian, Python 3.11, no GPU):
#   make demo   -> environment + synthetic trial + workflow to the finished report
#   make test   -> environment + the test suite
# On a GPU workstation: make env-gpu (README, "On a GPU workstation").
PYTHON   ?= python3.11
VENV     ?= .venv
GPU_VENV ?= .venv-gpu
BIN      := $(VENV)/bin
CORES    ?= 2

# torch==<v>+cpu in the locks (deepbet's runtime; CPU only) is PyTorch's CPU build, which PyPI
# does not serve (PyPI's Linux torch is the CUDA build, with GBs of nvidia-* wheels): pip finds
# it in this index. pip asks it for torch alone, first, with one retry and a short timeout, then
# installs the lock from PyPI with torch already in place. Where the index cannot be reached
# (a machine with the wheel in pip's find-links) that costs ~1 s and a warning; the index given
# for the whole lock would have cost ~8 s per package (pip retries each page 5 times).
# `make env TORCH_INDEX=<mirror>` points elsewhere.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN   := $(shell grep -E '^torch==' requirements.lock)

.PHONY: demo test validate validation-doc env env-gpu lint clean

# One lock file pins everything, every transitive dependency included, so nothing is
# resolved: --no-deps installs exactly the lock. That is also how the lock leaves out
# deepbet's GUI dependency (customtkinter), which the library call never imports
# (`pip check` names only that one). $(call install,VENV,LOCK)
define install
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet --no-deps --retries 1 --timeout 20 --extra-index-url $(TORCH_INDEX) $(TORCH_PIN)
	$(1)/bin/python -m pip install --quiet --no-deps -r $(2)
	$(1)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(1)/.installed
endef

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(GPU_VENV)/bin/python:
	$(PYTHON) -m venv $(GPU_VENV) || python3 -m venv $(GPU_VENV)

$(VENV)/.installed: requirements.lock pyproject.toml | $(VENV)/bin/python
	$(call install,$(VENV),requirements.lock)

# The GPU environment, a venv of its own: exactly requirements-gpu.lock (the main lock plus
# JAX's CUDA 12 build: 3.2 GB more to download), so .venv stays exactly what the tests and
# `make demo` run.
$(GPU_VENV)/.installed: requirements-gpu.lock pyproject.toml | $(GPU_VENV)/bin/python
	$(call install,$(GPU_VENV),requirements-gpu.lock)

env: $(VENV)/.installed

env-gpu: $(GPU_VENV)/.installed

demo: env
	$(BIN)/snakemake --cores $(CORES)
	mkdir -p results/report
	$(BIN)/snakemake --cores $(CORES) --report results/report/report.html
	@echo "Report: results/report/report.html"

# The validation study on known truth (docs/DESIGN.md §15): two synthetic trials with the
# clinical-realism profile, to docs/VALIDATION.md and docs/validation/. Resumable: rerun it after
# an interruption and Snakemake carries on from the files already made.
validate: env
	$(BIN)/snakemake --cores $(CORES) --configfile configs/validate.yaml -- docs/VALIDATION.md
	@echo "Validation: docs/VALIDATION.md"

# docs/VALIDATION.md again from the committed docs/validation/ alone (its TSVs, PNGs and run.json)
validation-doc: env
	$(BIN)/python -m t2lesion.validation.document docs/validation docs/VALIDATION.md

test: env
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: env
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/

clean:
	rm -rf results .snakemake
