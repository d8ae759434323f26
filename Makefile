# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make course   create .venv if missing, install, execute every notebook (PROFILE=smoke for a quick pass)
#   make test     create .venv if missing, install, run the tests (notebooks included, smoke profile)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= course
DEVICE ?= auto
STAMP := $(VENV)/.installed

.PHONY: install course test lint format bench clean

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

clean:
	rm -rf outputs .pytest_cache .ruff_cache
