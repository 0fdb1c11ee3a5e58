# vsop: the two entry points are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-plan test test-random deps venv unit netns vm kube image image-tier lint crd bench bench-cluster bench-keepalived clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; install python3 (>= 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# Debian packages for the kernel tiers (qemu, Debian's kernel, ipvsadm, ipset, iptables, keepalived...)
# and for the image (mmdebstrap, buildah).
deps:
	bash vm/install-deps.sh

# The live lab: boots Debian's kernel under qemu, rebuilds the seed's network in
# namespaces inside it, applies examples/seed.yaml and shows requests alternating.
demo: deps venv
	vm/run --timeout 900 -- bash demo/lab.sh

# The same plan without a VM: what a clean node would be told.
demo-plan: venv
	$(BIN)/vsop plan --from-empty -f examples/seed.yaml

bench: deps venv
	vm/run --timeout 3000 --mem 4096 -- $(BIN)/python bench/sync_bench.py

# vsop's host agent beside keepalived on the same services, in the VM (the 10k column alone:
# KEEPALIVED_SIZES=10000 KEEPALIVED_TIMEOUT=3900 KEEPALIVED_MEM=6144, 34 min on this machine).
KEEPALIVED_SIZES ?= 100 1000
KEEPALIVED_TIMEOUT ?= 1500
KEEPALIVED_MEM ?= 4096
bench-keepalived: deps venv
	vm/run --timeout $(KEEPALIVED_TIMEOUT) --mem $(KEEPALIVED_MEM) -- $(BIN)/python bench/keepalived_side_by_side.py --sizes $(KEEPALIVED_SIZES)

# What one change costs the API server with 10 and 100 simulated node agents (counts, not timings;
# CLUSTER_NODES="10 100 1000" for 1,000, see docs/performance.md for how long it takes):
# commit $(CLUSTER_BEFORE) (before the API server's endpoints came from the watch; exported to .cache/;
# 66ef99c is the design before NodeReports, too slow at 1,000) and this tree, side by side.
# The before side runs CLUSTER_BEFORE_NODES (default: the same N); CLUSTER_BEFORE_NODES="10 100"
# with CLUSTER_NODES="10 100 1000" leaves its 1,000 column empty ("-") and halves the run.
CLUSTER_BEFORE ?= e7216d4
CLUSTER_NODES ?= 10 100
CLUSTER_BEFORE_NODES ?= $(CLUSTER_NODES)
bench-cluster: venv
	rm -rf .cache/cluster-before && mkdir -p .cache/cluster-before
	git archive $(CLUSTER_BEFORE) | tar -x -C .cache/cluster-before
	cp bench/cluster_sim.py .cache/cluster-before/bench/
	cd .cache/cluster-before && $(CURDIR)/$(BIN)/python bench/cluster_sim.py --nodes $(CLUSTER_BEFORE_NODES) --label before --json $(CURDIR)/.cache/cluster-before.json >/dev/null
	$(BIN)/python bench/cluster_sim.py --nodes $(CLUSTER_NODES) --label after --compare .cache/cluster-before.json --json .cache/cluster-after.json

test: deps venv
	bash tests/run-tiers.sh

# The property tests with a fresh random seed (the tiers run hypothesis derandomized): the seed is
# printed first; a failure found here goes on its test as an @example. SEED=N repeats a run.
SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
test-random: venv
	@echo "test-random: hypothesis seed $(SEED) (repeat with: make test-random SEED=$(SEED))"
	$(BIN)/python -m pytest -q -rs --hypothesis-profile=random --hypothesis-seed=$(SEED) $$(grep -rl --include='test_*.py' '^from hypothesis import' tests/unit tests/crd)

unit: venv
	bash tests/run-tiers.sh unit

netns: venv
	bash tests/run-tiers.sh netns

vm: deps venv
	bash tests/run-tiers.sh vm

kube: venv
	bash tests/run-tiers.sh kube

# The Dockerfile built with buildah on a base made from Debian's packages (no registry needed),
# tagged vsop:VERSION (IMAGE=REGISTRY/vsop:TAG to tag it otherwise); its size and layers printed.
image: deps
	bash image/build.sh

image-tier: deps venv
	bash tests/run-tiers.sh image

lint: venv
	$(BIN)/lint-imports

crd: venv
	$(BIN)/vsop crd > crds/virtualservices.vsop.dev.yaml
	$(BIN)/python -c 'import sys, vsop.api.crd; sys.stdout.write(vsop.api.crd.node_report_crd_yaml())' > crds/nodereports.vsop.dev.yaml
	$(BIN)/python -c 'import sys, vsop.api.crd; sys.stdout.write(vsop.api.crd.vip_pool_crd_yaml())' > crds/vippools.vsop.dev.yaml
	$(BIN)/python -c 'import sys, vsop.api.crd; sys.stdout.write(vsop.api.crd.bgp_speaker_crd_yaml())' > crds/bgpspeakers.vsop.dev.yaml

clean:
	rm -rf $(VENV) .cache build dist
