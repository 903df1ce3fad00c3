# EdgeFleet: `make demo` and `make test` set everything up from a clean clone with only Python.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint services browser monitoring dist clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (the compiler extra's torch is then already satisfied; never a CUDA build).
	$(PY) -m pip install -q torch==2.13.0 || \
	  $(PY) -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q -e '.[all]'
	# The compiler tests' YOLOv8n detector; --no-deps: only its 320n.onnx is used, not its OpenCV code.
	$(PY) -m pip install -q --no-deps nudenet==3.4.2
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the console's browser tests (Playwright drives it with executable_path).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "warning: could not install chromium; browser tests will fail with a clear message"

# Debian's prometheus (prometheus + promtool) for the alert-rule and scrape tests (deploy/prometheus/).
monitoring:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
	  { apt-get update -q && apt-get install -y -q prometheus; } \
	  || echo "warning: could not install prometheus; the Prometheus tests will fail with a clear message"

# Mosquitto at 127.0.0.1:1883 and PostgreSQL at 127.0.0.1:5432, started when they are not running.
services:
	bash scripts/services.sh

demo: install
	$(VENV)/bin/edgefleet demo

test: install browser monitoring services
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install services
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install services
	$(PY) benchmarks/run_all.py

# Wheel and sdist in dist/ (PEP 517 hooks of the installed setuptools: no download, no isolation).
# Install one elsewhere with: pip install 'dist/edgefleet-0.1.0-py3-none-any.whl[fleet]'
dist: install
	rm -rf dist
	$(PY) -c "from setuptools import build_meta as b; print('dist/' + b.build_sdist('dist')); print('dist/' + b.build_wheel('dist'))"

lint: install
	$(VENV)/bin/ruff check .
	$(PY) -m mypy agent   # settings: [tool.mypy] in pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache benchmarks/out dist
