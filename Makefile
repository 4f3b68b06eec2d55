# The two set-up commands of the README: `make run` (the main job) and `make test` (the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/main

.PHONY: install run test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/ytdnn run --out $(RUN_DIR)

test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache
