# Two commands on a fresh machine: `make run` and `make test`. The first use creates .venv and installs
# everything pinned in pyproject.toml from PyPI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-postgres discovery test test-unit test-fast lint molecule bench bench-workers bench-harness bench-vms clean install \
	guest-deps postgres-deps guest-images bench-guests

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' || $(BIN)/pip install -e '.[dev]'  # once more, out loud, after a failure
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/provisioner run --dev-token

# The same on PostgreSQL (the server binaries from `make postgres-deps`): a cluster of its own in .run/postgres (as
# root: .run-postgres, which its unprivileged user can enter), started unless it runs, stopped when the service stops.
run-postgres: $(STAMP)
	$(BIN)/provisioner run --dev-token --local-postgres

# The discovery registry alone, configured by the DISCOVERY_* variables (`make run` embeds one).
discovery: $(STAMP)
	$(BIN)/provisioner discovery

# Real guests (PROVISIONER_SIM_GUESTS=container|vm, and the real-guest tests) need these Debian packages and root.
GUEST_PACKAGES := mmdebstrap systemd-container dnsmasq-base iproute2 e2fsprogs openssh-client qemu-system-x86 qemu-utils \
	genisoimage

guest-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GUEST_PACKAGES)

# PostgreSQL's server binaries, for `make run-postgres` and the tests run on PostgreSQL (skipped without them, unless
# PROVISIONER_POSTGRES_REQUIRED=1). Debian's package also sets up its own cluster; ours never touch it.
postgres-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql

# Build the guest images the cache lacks (Debian 12 and 13, container and vm; each once, about a minute).
guest-images: $(STAMP)
	$(BIN)/python -m simulator.guests.images

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# tests/unit alone: no port, no process, no simulator; seconds.
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check provisioner engine web_provider api discovery common simulator collections tests bench molecule
	$(BIN)/ruff format --check provisioner engine web_provider api discovery common simulator collections tests bench molecule
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/ansible-lint --profile production playbooks roles molecule

# Every Molecule scenario under molecule/, one after the other, each against its own Proxmox simulator and seed
# server (molecule/shared/create.yml). Molecule runs ansible-config and ansible-playbook from PATH.
molecule: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/molecule test --all

bench-guests: $(STAMP)
	$(BIN)/python bench/real_guests.py --cold-build

bench: $(STAMP)
	$(BIN)/python bench/bench.py

# 50 concurrent creates on the reference provider's measurement harness (../shared/examples/fakepve_harness.py).
bench-harness: $(STAMP)
	$(BIN)/python bench/harness.py --repeat 3

# Operator VMs: 50 POST /v1/vms with Idempotency-Keys and GET /v1/vms at 1,000, each beside VISA's in the same run.
bench-vms: $(STAMP)
	$(BIN)/python bench/vms.py

# 200 creates to all ACTIVE with 1, 2 and 4 worker processes; a burst during a playbook run against the tree
# before worker processes.
bench-workers: $(STAMP)
	$(BIN)/python bench/bench.py --only scale --creates 200 --workers 1,2,4
	$(BIN)/python bench/bench.py --only post --busy --against 62940c4 --repeat 3

clean:
	rm -rf $(VENV) .run .run-postgres .pytest_cache
