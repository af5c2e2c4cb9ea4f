# `make train` and `make test` work on a fresh machine: each creates .venv when it is
# missing and (re)installs the project whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

# Extra Hydra overrides go in ARGS, e.g. `make train ARGS="model=cnn trainer.epochs=3"`.
train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n auto $(ARGS)

# Side-by-side speed measurements: `make bench ARGS="--quick --out saved/benchmark.json"`.
bench: $(STAMP)
	$(PY) benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV)
