# scalelab: `make demo` and `make test` do all setup on a fresh Debian/Ubuntu machine (as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest
FAB    := $(VENV)/bin/fab
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed-$(shell sha256sum $(LOCK) 2>/dev/null | cut -c1-12)
LAB_DEBS := debootstrap systemd-container iptables dnsmasq-base openssh-client
# The report's browser test opens report.html in headless Chromium (Debian's package).
BROWSER_DEBS := chromium

.PHONY: help setup lab-deps browser-deps lock test test-unit test-report test-lab test-upgrade demo bench bench-provision bench-hdfs bench-scale lint clean lab-up lab-down

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (python3.11, python3.11-venv)"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# uv (pinned in the lock) installs the lock, several times faster than pip, with pip's index settings
	# passed on. torch is pinned to its CPU build: from ../shared/wheels (or $$SCALELAB_WHEELS) when it
	# holds the wheel, otherwise from PyTorch's CPU index (scalelab.wheelhouse decides, for the nodes too).
	$(PY) -m scalelab.wheelhouse install --lock $(LOCK)
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)  ## create .venv from the lock (idempotent; CPU torch)

lab-deps:  ## install the Debian packages the lab needs (root)
	@missing=$$(for p in $(LAB_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

browser-deps:  ## install headless Chromium for the report's browser test (root; skipped when present)
	@command -v chromium >/dev/null && exit 0; \
	if [ "$$(id -u)" != 0 ]; then echo "error: chromium is missing: run \`make browser-deps\` as root (apt-get install $(BROWSER_DEBS))"; exit 2; fi; \
	echo "installing $(BROWSER_DEBS)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_DEBS) >/dev/null

lock:  ## re-resolve requirements.in into requirements.lock (in a scratch venv)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv && .lockenv/bin/pip install -q -r requirements.in
	{ head -3 $(LOCK); .lockenv/bin/pip freeze | grep -v '^-e '; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	rm -rf .lockenv
	$(MAKE) setup && $(PY) -m scalelab.nodelock

test-unit: setup  ## fast tests: units and local workload runs (no root needed)
	$(PYTEST) --durations=15 tests/unit tests/workloads

test-report: setup browser-deps  ## the report built from real runs, opened in headless Chromium (root for the install)
	$(PYTEST) --durations=5 tests/report

test-lab: setup lab-deps  ## lab tests: bring the lab up, test it, provision it, tear it down (root)
	$(PYTEST) --durations=25 -m "not release_upgrade" tests/e2e

test-upgrade: setup lab-deps  ## a bullseye lab host taken to bookworm by os_upgrade (root; CI runs it)
	$(PYTEST) --durations=10 -m release_upgrade tests/e2e

test: test-unit test-report test-lab  ## everything CI runs

lab-up: setup lab-deps  ## bring the local lab up
	$(FAB) lab-up

lab-down: setup  ## tear the local lab down
	$(FAB) lab-down

demo: setup lab-deps  ## lab up, provision, datasets, PageRank + k-means on Ray and torch, report
	$(FAB) demo

bench: setup  ## benchmarks (timings live here, never in tests)
	$(PY) -m bench.graph_bench
	$(PY) -m bench.comm_bench

bench-provision: setup lab-deps  ## site.yml on 3 fresh lab hosts, cold and re-run, beside the targets (root)
	$(PY) -m bench.provision_bench

bench-hdfs: setup  ## data_1 read over WebHDFS beside the local copy on a lab worker (after fab put-data data_1)
	$(PY) -m bench.hdfs_bench

bench-scale: setup  ## PageRank + k-means on the `data` cut (620 M edges) on the running lab's 3 nodes (slow; disk + memory)
	$(PY) -m bench.scale_bench

lint: setup  ## ruff and ansible-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ansible-lint --offline -q site.yml

clean:  ## remove the venv and caches (not the lab's base image)
	rm -rf $(VENV) .pytest_cache .ruff_cache
