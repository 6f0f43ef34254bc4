# ctr: make setup | make demo | make test | make test-fast
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

# Order matters: torch first (the CPU wheel, exact pin), then the pinned rest, then torchrec
# without its metadata's CUDA-only fbgemm-gpu (fbgemm-gpu-cpu from the pins replaces it).
$(STAMP): pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -r requirements/cpu.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps torchrec==1.8.0
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/ctr train recipes/quickstart.yaml

# Two workers, each kept to a core of its own (tests/conftest.py): about 14 minutes on 2 cores
# (CI, 2026-12-07); one process, whose 2 threads wait on each other in the many small steps, is slower.
PYTEST := TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal

test: setup
	$(PYTEST) --durations=25

test-fast: setup
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
