# The two commands: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint format bench clean system-deps

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/curation demo

# Two processes (pytest-xdist): the suite waits on servers and subprocesses about a third of its time.
# Each test file runs whole on one, so its module fixtures start once; each process starts the servers
# of its session fixtures (S3, PostgreSQL, Ray) on ports of its own.
test: $(INSTALLED) lint system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

system-deps:
	bash scripts/system-deps.sh

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo-output .curation .pytest_cache .ruff_cache
