# `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install test demo clive reproduce gpu-check gpu-deps clean-outputs

install:
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"

# Two pytest-xdist workers with one torch thread each: most of the suite is single-threaded (kernel
# starts, imports, papermill), so two at once halve it; two threads each would oversubscribe 2 cores.
# --dist loadgroup keeps each xdist_group on one worker (the demo pipeline's tests: built once).
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --dist loadgroup

demo: install
	$(PYTHON) -m iqa_lib.run_all --profile demo

# The cpu profile on real human scores: CLIVE re-split 80/20, 15 runs, holdout scored (README).
CLIVE_SRC ?= ../shared/data/clive_dev
clive: install
	test -f data/clive/dataset.json || $(PYTHON) -m iqa_lib.datasets.prepare kit $(CLIVE_SRC) data/clive --holdout 0.2 --mos-scale 100 --link
	$(PYTHON) -m iqa_lib.run_all --profile cpu

reproduce: install
	$(PYTHON) -m iqa_lib.run_all

# Everything GPU-only in one call (~7 min on an H100/H200): no install step, random weights (README, Speed).
gpu-check:
	PYTHONPATH=.:.gpu_deps $(PYTHON) benchmarks/gpu_check.py

# The kit's own pure-Python dependencies that a bare GPU machine may lack (pydantic, filelock), in a
# folder to copy there beside the tree: then gpu-check's kit sections (resume, fit, predict) run too.
gpu-deps:
	$(PIP) install --quiet --disable-pip-version-check --target .gpu_deps "pydantic>=2.6" "filelock>=3.12"

clean-outputs:
	rm -rf outputs/runs outputs/preds outputs/notebooks outputs/eda outputs/folds.csv outputs/submission.csv
