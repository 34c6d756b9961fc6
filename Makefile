# Two entry points for a fresh machine (no GPU; only the package registries):
#   make demo   - set up, import the bundled model, run it, compare with onnxruntime
#   make test   - set up, run the whole test suite
# Both create .venv on first use and reuse it afterwards (re-installing only when
# pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.einfuse-installed
# pytest workers: the suite is CPU-bound; one per core.
JOBS   ?= 2

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: this exact CPU build lies on the machine's disk; an unpinned
	# torch (asked for by transformers) would pull a multi-GB CUDA build instead.
	$(PY) -m pip install --quiet 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m einfuse.demo

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q -n $(JOBS) --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
