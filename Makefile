# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make course   create .venv if missing, install, execute every notebook (PROFILE=smoke for a quick pass)
#   make test     create .venv if missing, install, run the tests (notebooks included, smoke profile)
#   make paper DATA=/path/to/PASCAL_MT [RECIPE=paper-quick|paper|fixture]   the MTLoRA paper's table
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= course
DEVICE ?= auto
STAMP := $(VENV)/.installed
RECIPE ?= paper-quick
DATA ?=

.PHONY: install course test lint format bench paper gpu-check gpu-check-dry clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

course: install
	$(PY) scripts/run_course.py --profile $(PROFILE) --device $(DEVICE)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(PY) benchmarks/bench.py --device $(DEVICE)

paper: install
	$(PY) -m mtlora_lite.paper --recipe $(RECIPE) --device $(DEVICE) $(if $(DATA),--data $(DATA))

# The prepared GPU check (CUDA tests, the course's training runs, the benchmark; about 7 min on
# one H200): benchmarks/RESULTS.md says how to run it on a lent GPU. gpu-check-dry runs the same
# parts on the CPU, small (about 3 min on 2 cores).
gpu-check: install
	rm -rf outputs/gpu_check
	$(PY) benchmarks/gpu_check.py --out outputs/gpu_check

gpu-check-dry: install
	rm -rf outputs/gpu_check_dry
	$(PY) benchmarks/gpu_check.py --dry-run --out outputs/gpu_check_dry

clean:
	rm -rf outputs .pytest_cache .ruff_cache
