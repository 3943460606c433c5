# Fresh machine: `make demo` trains the offline quickstart, `make test` runs the test suite.
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	# W&B's sweep-schema validator pins numpy<2 but works with numpy 2: test-only, no deps.
	$(PY) -m pip install --quiet --no-deps sweeps==0.2.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) train.py

# One process per core, one thread each (tiny CPU models gain nothing from intra-op threads, and
# the DDP tests start processes of their own); a test file stays in one process (shared fixtures).
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check lightning_score tests train.py bench
	$(VENV)/bin/ruff format --check lightning_score tests train.py bench
