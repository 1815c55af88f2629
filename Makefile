# `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test demo reproduce clean-outputs

install:
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"

test: install
	$(PYTHON) -m pytest -q

demo: install
	$(PYTHON) -m iqa_lib.run_all --profile demo

reproduce: install
	$(PYTHON) -m iqa_lib.run_all

clean-outputs:
	rm -rf outputs/runs outputs/preds outputs/notebooks outputs/eda outputs/folds.csv outputs/submission.csv
