# Set-up, tests and the main job. `make setup` is idempotent and runs on a clean machine.
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
RUNS ?= runs

# The CPU recipe for Fashion-MNIST (training/train_tiny.py RECIPES; docs/training.md explains each choice).
FMNIST_RECIPE := --recipe fmnist-cpu
EPOCHS ?= 8

.PHONY: setup data test lint demo demo-quick check train-fmnist-trades train-fmnist-natural bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's package where apt can install it; --download elsewhere.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist) >/dev/null \
		|| echo "note: could not install dataset-fashion-mnist; tests do not need it"; \
	else echo "note: Fashion-MNIST not in $(FMNIST); install dataset-fashion-mnist or pass --data/--download"; fi

# Two pytest-xdist workers: CI's machine has 2 cores and every test runs one torch thread.
test: setup
	$(PY) -m pytest -q -n 2

# The linter (rules in pyproject.toml [tool.ruff]); CI fails on any finding.
lint: setup
	$(VENV)/bin/ruff check .

# The main job: natural vs TRADES on Fashion-MNIST, trained, served over gRPC, scored by the top-5 suite.
demo: setup
	$(PY) demo/run.py --output $(RUNS)/demo

# Every stage of the demo on small settings (a smoke run).
demo-quick: setup
	$(PY) demo/run.py --quick --output $(RUNS)/demo-quick

# The submitted model (crisp.yaml): the full 8-epoch TRADES recipe.
train-fmnist-trades: setup
	$(PY) training/train_tiny.py $(FMNIST_RECIPE) --loss trades --beta 6 --epochs $(EPOCHS) \
		--output $(RUNS)/fmnist-trades --resume

# The submission (crisp.yaml -> runs/fmnist-trades/artifact) tested as the competition would, before building the image.
check: setup
	$(PY) -m defense check crisp.yaml

train-fmnist-natural: setup
	$(PY) training/train_tiny.py $(FMNIST_RECIPE) --loss natural --epochs $(EPOCHS) \
		--output $(RUNS)/fmnist-natural --resume

bench: setup
	$(PY) bench/train_step.py

clean:
	rm -rf $(RUNS) .pytest_cache
