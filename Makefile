# Mailsluice developer entry points. `make run` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=
RUN_ARGS ?=
CAMPAIGN_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=

.PHONY: help setup system-deps kafka-jars k8s-build image k8s-up k8s-down k8s-node-up \
        k8s-node-down lint typecheck test run \
        bench chaos kafka-up kafka-down kafka-cluster-up kafka-cluster-down docs clean

help:
	@echo "make run    - run the whole pipeline locally (Kafka, ingest, HTTP API, delivery, streams, webhooks, sandbox MX)"
	@echo "make test   - install what is needed, then ruff, mypy and the full pytest suite"
	@echo "make bench  - throughput, CPU per message, latency and memory (against Postfix; BENCH_ARGS=--profile DIR), scale-out, ingest memory, shaping, campaign, DKIM, HTTP API, engagement"
	@echo "make chaos  - the fault run: kills and a broker restart under load (CHAOS_ARGS=--help)"

# Each set-up step prints its name and elapsed time (scripts/steps.py); pip shows each package.
$(STAMP): pyproject.toml
	@$(PYTHON) scripts/steps.py "create the virtualenv ($(VENV))" -- $(PYTHON) -m venv $(VENV)
	@$(PYTHON) scripts/steps.py "pip install -e '.[dev]' (the first time: a minute or two)" -- \
	  $(BIN)/pip install --disable-pip-version-check --progress-bar off -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP) system-deps kafka-jars

system-deps:
	@$(PYTHON) scripts/steps.py "Debian packages (only those missing)" -- \
	  bash scripts/install_system_deps.sh

kafka-jars: system-deps
	@$(PYTHON) scripts/steps.py "Kafka jars (Maven Central, cached under .cache)" -- \
	  $(PYTHON) scripts/kafka_local.py fetch

lint: $(STAMP)
	$(BIN)/ruff check services operator tests scripts
	$(BIN)/ruff format --check services operator tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy -p mailsluice -p mailsluice_operator
	$(BIN)/lint-imports

test: setup k8s-build image lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# Only the venv first: run_local.py checks every service's settings before it installs or
# starts anything else (the Debian packages, the Kafka jars, the broker, the services).
run: $(STAMP)
	@$(BIN)/python scripts/run_local.py $(RUN_ARGS)

bench: setup
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench_scale.py
	$(BIN)/python scripts/bench_ingest_memory.py
	$(BIN)/python scripts/bench_shaping.py
	$(BIN)/python scripts/bench_campaign.py $(CAMPAIGN_ARGS)
	$(BIN)/python scripts/bench_dkim.py
	$(BIN)/python scripts/bench_api.py
	$(BIN)/python scripts/bench_engagement.py

# 20,000 messages at 70/s with worker and ingest kills and a broker restart; docs/faults.md.
chaos: setup
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

# etcd, kube-apiserver, helm, kubelet, kube-controller-manager, kube-scheduler, kube-proxy and
# kubectl built from Go modules, and the pause image (cached; the first build takes minutes).
k8s-build: system-deps
	@$(PYTHON) scripts/k8s_node.py build

# The container image from the Dockerfile (buildah, a Debian base made with mmdebstrap), as an OCI
# archive under .cache/images keyed by content: minutes the first time, nothing while unchanged.
image: system-deps
	@$(PYTHON) scripts/image_build.py build

# The control plane alone (etcd + kube-apiserver on 127.0.0.1, no kubelet): the operator tests'.
k8s-up: k8s-build
	$(PYTHON) scripts/k8s_local.py up --dir run/k8s

k8s-down:
	$(PYTHON) scripts/k8s_local.py down --dir run/k8s

# A single-node cluster whose pods run (containerd + runc, bridge mls-k8s0, node IP 10.217.0.1),
# with the project's image imported; `eval "$$(python3 scripts/k8s_node.py env --dir
# run/k8s-node)"` for KUBECONFIG and PATH (kubectl, helm).
k8s-node-up: k8s-build
	@set -e; out=$$($(PYTHON) scripts/image_build.py build); set -- $$out; \
	  $(PYTHON) scripts/k8s_node.py up --dir run/k8s-node --image "$$1"; echo "image: $$2"

k8s-node-down:
	$(PYTHON) scripts/k8s_node.py down --dir run/k8s-node

kafka-up: kafka-jars
	$(PYTHON) scripts/kafka_local.py start --dir run/kafka --port 9092

kafka-down:
	$(PYTHON) scripts/kafka_local.py stop --dir run/kafka

# Three brokers, replication factor 3, min.insync.replicas 2 (README: Durability)
kafka-cluster-up: kafka-jars
	$(PYTHON) scripts/kafka_local.py start --dir run/kafka3 --nodes 3

kafka-cluster-down:
	$(PYTHON) scripts/kafka_local.py stop --dir run/kafka3

docs: $(STAMP)
	$(BIN)/mailsluice config docs > docs/configuration.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache run
