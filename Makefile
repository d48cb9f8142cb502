# Two commands on a fresh machine: `make demo` (offline demo on the embedded model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# GPU machines: `make CONSTRAINTS= demo` keeps your CUDA/ROCm torch instead of the CPU pin.
CONSTRAINTS ?= constraints-cpu.txt
PIP_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
# PyPI's torch wheel is the CUDA build (GBs); PyTorch's CPU wheels live on its own index. With the CPU pin, the venv
# takes torch from TORCH_INDEX when that index answers within 3 s; otherwise (a network that reaches only PyPI or a
# mirror) pip takes the pinned torch from its configured sources, and says so. `make TORCH_INDEX= demo` skips it.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_PROBE := import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=3)

.PHONY: demo test test-gpu venv browser-deps screenshots lab clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifneq ($(and $(CONSTRAINTS),$(TORCH_INDEX)),)
	@if $(PY) -c '$(TORCH_INDEX_PROBE)' '$(TORCH_INDEX)' 2>/dev/null; then \
		echo "torch: the CPU build from $(TORCH_INDEX)"; \
		$(PY) -m pip install -q -c $(CONSTRAINTS) --extra-index-url '$(TORCH_INDEX)' torch; \
	else \
		echo "torch: $(TORCH_INDEX) did not answer; pip takes the pinned torch from its configured sources" \
			"(PyPI alone serves the CUDA build)"; \
	fi
endif
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[notebooks,test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fluxlab demo --out fluxlab-demo

# Debian's Chromium for the real-browser notebook test (never `playwright install`). Installing needs root (CI is):
# without it `make test` goes on and the browser tests are skipped with one line saying so.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$FLUXLAB_CHROMIUM" ] || \
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else echo "browser-deps: no chromium, and installing it needs root: the browser tests will be skipped" \
		"(sudo make browser-deps enables them)"; fi

# --durations: the slowest tests are listed on every run (speed is watched here, never asserted in a test).
# PYTHONUTF8: text files are read as UTF-8 whatever the locale.
test: venv browser-deps
	PYTHONUTF8=1 $(PY) -m pytest -m "not gpu" -q --durations=20

# Re-take the README's notebook screenshots into docs/screenshots/ (a plain `make test` writes them to a temp folder).
screenshots: venv browser-deps
	FLUXLAB_UPDATE_SCREENSHOTS=1 $(PY) -m pytest -m browser -q tests/test_browser.py

# JupyterLab on the notebooks (as root, e.g. in a container: make lab LAB_FLAGS=--allow-root).
lab: venv
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_FLAGS)

# On a GPU machine: the backend tests for every kernel that can run there.
test-gpu:
	$(PY) -m pytest -m gpu -q

clean:
	rm -rf $(VENV) fluxlab-demo
