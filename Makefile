# Two commands matter: `make run` (the bot against your homeserver) and `make test` (everything).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config.yaml

.PHONY: run check test lint install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	@test -f $(CONFIG) || { cp config.example.yaml $(CONFIG); \
	  echo "Created $(CONFIG) from config.example.yaml: edit homeserver, user_id and password, then run make run again."; exit 2; }
	$(PY) -m bot check --config $(CONFIG)
	$(PY) -m bot run --config $(CONFIG)

check: $(VENV)/.installed
	$(PY) -m bot check --config $(CONFIG)

lint: $(VENV)/.installed
	$(PY) -m ruff check bot tests bench
	$(PY) -m ruff format --check bot tests bench
	$(PY) -m mypy

# The Element-like test client (tests/element, matrix-js-sdk) for the integration tests.
tests/element/node_modules/.installed: tests/element/package-lock.json
	npm ci --prefix tests/element --no-audit --no-fund
	touch $@

# The container tests build and run the image with podman (Debian's), runc and mmdebstrap;
# podman-compose comes from PyPI with the test extra. The clock-fault tests run the bot under
# libfaketime (Debian's faketime).
CONTAINER_TOOLS := podman runc mmdebstrap uidmap faketime
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
.PHONY: container-tools
container-tools:
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null \
	  && command -v runc >/dev/null && command -v faketime >/dev/null \
	  || { $(SUDO) apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(CONTAINER_TOOLS); }

test: lint tests/element/node_modules/.installed container-tools
	CONTAINERS_CONF=$(CURDIR)/tests/containers/containers.conf $(PY) -m pytest -q -p no:cacheprovider

# A throw-away local Synapse, the bot, and a terminal chat with it as @newcomer:localhost.
.PHONY: demo
$(VENV)/.installed-demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(VENV)/.installed-demo
	$(PY) -m bot demo

# The container image, with podman or docker (deploy/build-image.sh says how it copes without a
# registry). IMAGE=name:tag to choose its name.
.PHONY: image
IMAGE ?= onboarding-bot:local
image:
	IMAGE=$(IMAGE) deploy/build-image.sh

# Benchmarks (bench/): tables and ratios, no assertions. `$(PY) -m bench --quick` for a short run.
.PHONY: bench
bench: $(VENV)/.installed
	$(PY) -m bench
