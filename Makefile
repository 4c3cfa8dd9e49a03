# capserve: the two commands of the quick start are `make serve` and `make test`.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
STORE ?= model_store
PYTEST_ARGS ?=

.PHONY: venv system-deps protos lint test test-unit models store serve bench reliability e2e-compose clean-store compare

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	$(PYTHON) -m pip check
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@scripts/system-deps.sh

protos: venv
	$(PYTHON) scripts/gen_protos.py

lint: venv
	$(VENV)/bin/ruff check training export serving bench tests scripts deploy
	$(VENV)/bin/mypy training export serving

test: venv system-deps lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Train the default models from scratch (about 12 CPU-minutes), then export them.
models: venv
	$(PYTHON) -m training.defaults --out checkpoints --jobs 2
	$(MAKE) store STORE=$(STORE) FORCE=1

# Export the committed default checkpoints into the model store when it is empty.
store: venv
	$(PYTHON) -m export.defaults --checkpoints checkpoints --store $(STORE) $(if $(FORCE),--force,)

serve: venv store
	$(PYTHON) -m serving --model-store $(STORE)

bench: venv system-deps store
	$(PYTHON) -m bench

# Hostile input, overload, SIGTERM, hot swap, stuck backend and soak against real servers
# (loopback, free ports, about 15 minutes; --quick for under 2): docs/reliability.md.
reliability: venv system-deps store
	$(PYTHON) -m bench.reliability

# The whole Compose stack for real (needs a Docker engine; see docs/deploy.md).
e2e-compose:
	deploy/e2e-compose.sh

# CNNs against CapsNet (few examples, shifts/rotations, Picasso, pose probes): docs/capsules.md,
# about 30 CPU-minutes on one thread; `make compare QUICK=1` is the one-minute smoke run
# (written under build/compare-quick/). SPEED=bench/results/X.json adds the served speed table.
compare: venv
	$(PYTHON) -m training.compare $(if $(QUICK),--quick,) $(if $(SPEED),--speed $(SPEED),)

clean-store:
	rm -rf $(STORE)/*/ $(STORE)/*.mar
