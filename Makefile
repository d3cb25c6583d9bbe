# Two commands do all set-up on a fresh machine (see README):
#   make demo   -- create .venv, install, run the demo
#   make test   -- create .venv, install, run the default test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU-only machines take the CPU build of torch (never a multi-GB CUDA download);
# machines with an NVIDIA driver take the default build. Override with TORCH_SPEC=...
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.10" || echo "torch==2.13.0")

.PHONY: install demo test test-slow test-gpu test-ray bench lint format clean docs docs-clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pyrobust demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

test-gpu: install
	$(PY) -m pytest -q -m gpu

# Ray is an optional extra: installed here, then only the `ray`-marked tests run
# (pyrobust.audit on a local 2-CPU Ray cluster: same answers as the local engine, faults survived).
test-ray: install
	$(PY) -m pip install -q -e ".[ray]"
	$(PY) -m pytest -q -m ray

bench: install
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

lint: install
	$(VENV)/bin/ruff check pyrobust tests benchmarks examples
	$(VENV)/bin/ruff format --check pyrobust tests benchmarks examples

format: install
	$(VENV)/bin/ruff format pyrobust tests benchmarks examples
	$(VENV)/bin/ruff check --fix pyrobust tests benchmarks examples

# The documentation site (docs/_build/html): offline, every warning an error, tutorials executed.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

docs-clean:
	rm -rf docs/_build docs/generated docs/auto_tutorials

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
