# Two commands on a fresh machine: `make demo` (offline demo on the embedded model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# GPU machines: `make CONSTRAINTS= demo` keeps your CUDA/ROCm torch instead of the CPU pin.
CONSTRAINTS ?= constraints-cpu.txt
PIP_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: demo test test-gpu venv browser-deps lab clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[notebooks,test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fluxlab demo --out fluxlab-demo

# Debian's Chromium for the real-browser notebook test (never `playwright install`).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: venv browser-deps
	$(PY) -m pytest -m "not gpu" -q

# JupyterLab on the notebooks (as root, e.g. in a container: make lab LAB_FLAGS=--allow-root).
lab: venv
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_FLAGS)

# On a GPU machine: the backend tests for every kernel that can run there.
test-gpu:
	$(PY) -m pytest -m gpu -q

clean:
	rm -rf $(VENV) fluxlab-demo
