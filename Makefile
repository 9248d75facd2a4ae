# aiguard — every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
LOCAL       := .local
KUBECONFIG_LOCAL := $(LOCAL)/kubeconfig
PACKAGES    := api/aiguard_api operator/aiguard_operator sidecar/aiguard_sidecar

.PHONY: help setup system-deps k8s-binaries cluster-up cluster-down operator demo test test-unit \
        test-cluster lint fmt fuzz crds train-guardrails bench clean

help: ## this list
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.stamp: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[sidecar,operator,ner,dev]'
	@touch $@

setup: $(VENV)/.stamp ## .venv with the package, all extras and test tools (idempotent)

system-deps: ## Debian packages the tests run for real (redis-server, prometheus); needs root
	hack/system-deps.sh

k8s-binaries: ## build etcd, kube-apiserver, kube-controller-manager, kubectl, helm once (cached)
	@bin=$$(hack/k8s-binaries.sh) && mkdir -p $(LOCAL)/bin && \
	  for b in etcd kube-apiserver kube-controller-manager kubectl helm; do ln -sf "$$bin/$$b" $(LOCAL)/bin/$$b; done

cluster-up: setup k8s-binaries ## local control plane; kubeconfig at .local/kubeconfig
	$(PY) -m tests.harness.cluster up --dir $(LOCAL)/cluster --kubeconfig $(KUBECONFIG_LOCAL)

cluster-down: ## stop the local control plane, leave no process behind
	@if [ -x $(PY) ]; then $(PY) -m tests.harness.cluster down --dir $(LOCAL)/cluster; fi

operator: setup ## run the operator against .local/kubeconfig (webhooks on 127.0.0.1)
	$(PY) -m tests.harness.devoperator --kubeconfig $(KUBECONFIG_LOCAL) --dir $(LOCAL)/operator

demo: setup k8s-binaries ## the whole product end to end on the local control plane
	$(PY) -m tests.harness.demo

test-unit: setup k8s-binaries ## fast tests: no control plane, no installs or fuzzing (helm from the cache)
	$(PY) -m pytest -m 'not cluster and not slow' -q

test-cluster: setup k8s-binaries ## tests against the real control plane
	$(PY) -m pytest -m cluster -q

test: setup k8s-binaries lint ## everything CI runs (lint, unit, control-plane tests)
	$(PY) -m pytest -q

lint: setup ## ruff check, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES)

fmt: setup ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

fuzz: setup ## coverage-guided fuzzing of the parsers for longer (AIGUARD_FUZZ_SECONDS, default 300 each)
	AIGUARD_FUZZ_SECONDS=$${AIGUARD_FUZZ_SECONDS:-300} $(PY) -m pytest -q tests/fuzz/test_fuzzers.py

crds: setup ## regenerate crds/ and docs/policy-reference.md from the aiguard_api models
	$(PY) -m aiguard_api.generate --crds crds --docs docs/policy-reference.md --view api/aiguard_api/view.py

.PHONY: chart chart-goldens
chart: crds ## regenerate the chart's CRD copies, RBAC rules, values.schema.json and README
	$(PY) hack/chart_gen.py

chart-goldens: setup ## re-render the chart's golden snapshots (review the diff)
	REFRESH_GOLDEN=1 $(PY) -m pytest -q tests/unit/test_chart.py -k golden

.PHONY: metrics-doc
metrics-doc: setup ## regenerate the metric reference in docs/metrics.md from the declarations
	$(PY) -m tests.observability.catalogue

train-guardrails: setup ## retrain the injection/moderation classifiers from ../shared/eval (reproducible)
	$(VENV)/bin/pip install --quiet scikit-learn
	$(PY) hack/train_guardrails.py --eval-dir ../shared/eval --out sidecar/aiguard_sidecar/guardrails/models

bench: setup k8s-binaries ## benchmarks → benchmarks/results/*.json and a printed table
	hack/install-bench-tools.sh
	$(PY) -m benchmarks.run

.PHONY: lock kind-up kind-e2e supply-chain
lock: setup ## regenerate the hashed lockfiles in requirements/ from pyproject.toml (needs PyPI)
	PY=$(PY) hack/lock.sh

kind-up: ## NEEDS DOCKER: kind cluster `aiguard`, both images built and loaded, helm install
	hack/kind-up.sh

kind-e2e: setup ## NEEDS DOCKER: kind-up, then tests/e2e/test_installed.py against the release
	PY=$(PY) hack/kind-e2e.sh

supply-chain: setup ## lockfile drift, pip-audit of the lockfiles, licences of the images' venvs
	PY=$(PY) hack/supply-chain.sh

clean: cluster-down ## remove .venv and .local (the binary cache in ~/.cache/aiguard stays)
	rm -rf $(VENV) $(LOCAL)
