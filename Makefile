# The two commands of the README: `make demo` and `make test`. Each creates
# the virtual environment on first use and installs the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-all lint fashion-mnist slurm clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian ships Fashion-MNIST's original files; without them (and without
# root) the loader downloads the same official files, checksummed, into
# ~/.cache/icckd_jax (or $ICCKD_DATA_DIR) where there is a network.
fashion-mnist:
	@if [ ! -d $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true; \
	fi

demo: $(VENV)/.installed fashion-mnist
	$(PY) launch.py --config=configs/demo.py --workdir=workdirs/demo

# CI's share: everything but the tests marked slow (several whole runs
# each: SIGTERM and two-process resume, worker sweeps, Tiny-ImageNet and
# .pth-teacher pipelines), which `make test-all` adds. `--dist loadscope`
# runs each test module on one worker, so a module-scoped fixture (a trained
# smoke run, a finished sweep) is built once, not once per worker.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadscope -m 'not slow' --durations=15

# Style (ruff: lint and format) and architecture (import-linter's contracts in pyproject.toml).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15

# A one-node SLURM on localhost (scripts/local_slurm.sh; Debian's slurmctld,
# slurmd, slurm-client and munge): `eval "$$(make -s slurm)"` points sinfo,
# sbatch and srun at it; `scripts/local_slurm.sh stop /tmp/icckd_slurm` ends it.
slurm:
	@scripts/local_slurm.sh start /tmp/icckd_slurm

clean:
	rm -rf $(VENV) workdirs .pytest_cache
