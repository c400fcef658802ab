# PrismFS developer entry points. Every target installs what it needs first,
# so `make demo` and `make test` work on a fresh Debian machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := fuse3 libfuse3-dev pkg-config rsync git sqlite3 attr iproute2
# the web console's tests drive a real browser
TEST_DEBS := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= .demo

.PHONY: install system-deps test-deps demo down test lint bench bench-peers clean install-mount-helper jepsen man

# $(call install_debs,PACKAGES): apt-get install those of PACKAGES that are missing.
define install_debs
	@missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; \
	fi
endef

## Debian packages pyfuse3 builds against and the mount needs, when missing.
system-deps:
	$(call install_debs,$(DEBS))

$(STAMP): pyproject.toml examples/prismfs-example-backend/pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[s3,test,lint]'
	# the example shard store plugin: the backend contract tests run against it
	$(BIN)/pip install --disable-pip-version-check -q -e examples/prismfs-example-backend
	touch $(STAMP)

install: system-deps $(STAMP)

## A 3-node local cluster mounted at $(DEMO_DIR)/mnt; `make down` unmounts and stops it.
demo: install
	$(BIN)/prismfs dev up --nodes 3 --dir $(DEMO_DIR) --mount $(DEMO_DIR)/mnt --http
	@echo
	@echo "PrismFS is running and mounted at $(CURDIR)/$(DEMO_DIR)/mnt. Try:"
	@echo "  cp -a /usr/share/doc $(DEMO_DIR)/mnt/ && ls $(DEMO_DIR)/mnt/doc | head"
	@echo "  df -h $(DEMO_DIR)/mnt"
	@echo "  . $(BIN)/activate && prismfs cluster status && prismfs stat /doc"
	@echo "  prismfs token create   # then: curl -H 'Authorization: Bearer TOKEN' http://HTTP_ADDRESS/v1/dirs"
	@echo "                         # (prismfs dev status shows each node's HTTP address)"
	@echo "  make down                         # unmount and stop everything"

## The manual pages in man/, made from the CLI, configuration and mount options.
man: install
	$(BIN)/python -m prismfs.cli.manpages man

## mount.prismfs where `mount -t prismfs` and /etc/fstab find it (/sbin).
install-mount-helper: install
	$(BIN)/prismfs install-mount-helper

down:
	@if [ -x $(BIN)/prismfs ] && [ -f $(DEMO_DIR)/dev.json ]; then \
	  $(BIN)/prismfs dev down --dir $(DEMO_DIR); \
	else echo "no demo cluster in $(DEMO_DIR)"; fi

## Debian packages only the tests need, when missing.
test-deps:
	$(call install_debs,$(TEST_DEBS))

test: install test-deps
	$(BIN)/pytest

## Five hosts in network namespaces under ROUNDS random faults (default 20);
## SEED=N replays a run (the seed is printed).
ROUNDS ?= 20
SEED ?= 0
jepsen: install
	PRISMFS_JEPSEN_ROUNDS=$(ROUNDS) PRISMFS_JEPSEN_SEED=$(SEED) $(BIN)/pytest -s \
	  tests/test_multihost.py

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/bench_wire.py
	$(BIN)/python benchmarks/bench_raft.py
	$(BIN)/python benchmarks/bench_meta.py
	$(BIN)/python benchmarks/bench_data.py
	@command -v fio >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y fio; }
	$(BIN)/python benchmarks/bench_fs.py

## PrismFS, MooseFS, GlusterFS and a local directory, interleaved; fills the table in
## docs/benchmarks.md and docs/img/bench-peers.png. Root only (network namespaces, mounts);
## installs the peers from Debian when missing. Smoke test:
##   make bench-peers BENCH_PEERS_ARGS="--size-mib 64 --runs 1 --md-files 2000 --no-docs"
BENCH_PEERS_ARGS ?=
bench-peers: install
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || \
	  $(BIN)/pip install --disable-pip-version-check -q matplotlib
	$(SUDO) $(BIN)/python benchmarks/bench_peers.py $(BENCH_PEERS_ARGS)

clean: down
	rm -rf $(VENV) $(DEMO_DIR) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
