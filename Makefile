# minidit: `make demo` and `make test` are all a fresh machine with Python 3.10+ and make needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUICK ?= 1
# Test processes (one torch thread each): small tensor ops run faster this way than with threads fighting.
JOBS ?= 2

.PHONY: setup demo lab test bench book reference clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m minidit demo

# JupyterLab on the course, opening the first lecture; --allow-root when run as root (containers, classroom images).
USER_ID ?= $(shell id -u)
LAB_START ?= notebooks/01_interpolants_1d.ipynb
lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(LAB_START) $(if $(filter 0,$(USER_ID)),--allow-root)

test: setup
	MINIDIT_QUICK=$(QUICK) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env tests notebooks solutions

bench: setup
	$(BIN)/python bench/samplers.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/kv_compression.py
	$(BIN)/python bench/refiner.py
	$(BIN)/python bench/frames.py

# Full runs of every lecture (about 6 hours on 2 CPU cores, the sum of book.toml's full_run_time): claims, verdicts, run times and figures into
# notebooks/reference/, which the quick runs and the book show next to their own numbers. NOTEBOOKS=... for some.
reference: setup
	MINIDIT_QUICK=0 $(BIN)/python -m minidit.course reference $(NOTEBOOKS)

book: setup
	$(BIN)/python -m minidit.course build-book --execute

clean:
	rm -rf $(VENV) runs _book
