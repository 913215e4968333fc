# pwl — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST_FILE := $(FMNIST_DIR)/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install data test lint

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) data ## Create .venv with pwl and its dev tools, and install Fashion-MNIST

data: ## Install Debian's dataset-fashion-mnist where apt and root are available
	@if [ -f "$(FMNIST_FILE)" ]; then \
	  echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is not installed and apt is not usable here. Either:"; \
	  echo "  - on Debian/Ubuntu: sudo apt-get update && sudo apt-get install dataset-fashion-mnist"; \
	  echo "  - with internet: the data module downloads it into data/ (data.download=true)"; \
	  echo "  - or copy the four idx .gz files somewhere and pass data.root=<dir>"; \
	fi

test: install ## Run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP) ## Check the code with ruff
	$(PY) -m ruff check pwl tests experiments
