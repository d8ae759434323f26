# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make course   create .venv if missing, install, execute every notebook (PROFILE=smoke for a quick pass)
#   make test     create .venv if missing, install, run the tests (notebooks included, smoke profile)
#   make paper [DATA=data/PASCAL_MT] [RECIPE=paper-quick|paper|fixture]   the MTLoRA paper's table
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= course
DEVICE ?= auto
STAMP := $(VENV)/.installed
RECIPE ?= paper-quick
# the PASCAL_MT archive (data/README.md); the fixture recipe writes its own
DATA ?= $(if $(filter fixture,$(RECIPE)),,data/PASCAL_MT)

.PHONY: install course test lint format bench paper gpu-check gpu-check-dry clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,course]"
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

# The GPU check (CUDA tests, the course's training runs, the benchmark; 500 s budget on one GPU):
# benchmarks/README.md. gpu-check-dry runs the same parts on the CPU, small (a few minutes).
gpu-check: install
	rm -rf outputs/gpu_check
	$(PY) benchmarks/gpu_check.py --out outputs/gpu_check

gpu-check-dry: install
	rm -rf outputs/gpu_check_dry
	$(PY) benchmarks/gpu_check.py --dry-run --out outputs/gpu_check_dry

clean:
	rm -rf outputs .pytest_cache .ruff_cache
