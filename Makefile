# edgeqwen — every command a user needs. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS_DIR ?= models
STANDIN := $(MODELS_DIR)/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

.PHONY: help setup setup-test model demo test test-fast quantize heads clean browser serve loadtest arm64-check

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# What running needs (setup), what the server adds (serve), what the tests add (setup-test): a board that
# only runs the model never gets torch, transformers or playwright.
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "installing edgeqwen; llama-cpp-python compiles llama.cpp the first time (~5-10 min), then pip reuses the wheel"
	$(BIN)/pip install --progress-bar off -e .
	@touch $@

$(VENV)/.installed-serve: $(VENV)/.installed-run
	$(BIN)/pip install --progress-bar off -e '.[serve]'
	@touch $@

$(VENV)/.installed-fast: $(VENV)/.installed-run
	$(BIN)/pip install --progress-bar off -e '.[test]'
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed-fast
	$(BIN)/pip install --progress-bar off -e '.[test,convert-test,ray]'
	@touch $@

setup: $(VENV)/.installed-run  ## create .venv and install edgeqwen (what running needs)

setup-test: $(VENV)/.installed-test  ## also install the test tools (pytest, the server extra, torch CPU for the converter tests, playwright, Ray)

model: setup  ## fetch the stand-in model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) into models/, verified by sha256
	$(BIN)/python scripts/fetch_standin.py --models-dir $(MODELS_DIR)

demo: setup model  ## install, fetch the model and run both roles on a few Chinese and English inputs
	@echo "== edgeqwen run - (each line routed to sentiment or chat) =="
	@printf '%s\n' \
	  '这家餐厅的服务太差了，我再也不会来了。' \
	  'The battery life is amazing and the screen is gorgeous.' \
	  '你好！请用两句话介绍一下长城。' \
	  'What should I cook tonight? Give me one quick idea.' \
	| $(BIN)/edgeqwen run -
	@echo; echo "== edgeqwen run --task both --json (sentiment, then a chat reply) =="
	@$(BIN)/edgeqwen run --task both --json '房间干净，早餐丰富，下次还会再来。'

test: setup-test model browser  ## run the whole test suite against the real model (and the web page in headless chromium)
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-fast  ## the tests that need no model file (under a minute; no model download)
	$(BIN)/python -m pytest -q -m "not model"

browser:  ## install Debian's chromium and a CJK font for the page test, unless already there (needs root)
	@if [ -x /usr/bin/chromium ] && [ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei; \
	else echo "the page test needs chromium: sudo apt-get install -y chromium fonts-wqy-zenhei" >&2; exit 1; fi

serve: $(VENV)/.installed-serve model  ## run edgeqwen serve on http://127.0.0.1:8080/ (API and page)
	$(BIN)/edgeqwen serve

loadtest: setup-test model  ## 32 concurrent clients against a local edgeqwen serve; writes tests/artifacts/load_test.json
	$(BIN)/python scripts/load_test.py

# make quantize [REPO=Qwen/Qwen1.5-0.5B] [QUANT=Q8_0] [LOCAL_DIR=folder with the repo's files] [OUT=models/x.gguf]
REPO ?= Qwen/Qwen1.5-0.5B-Chat
QUANT ?= Q4_K_M
quantize: setup  ## build Qwen1.5-0.5B-Chat from the Hugging Face Hub as a verified 4-bit GGUF in models/, with its heads (no torch)
	$(BIN)/edgeqwen quantize --repo $(REPO) --type $(QUANT) $(if $(LOCAL_DIR),--local-dir $(LOCAL_DIR)) $(if $(OUT),--output $(OUT)) $(if $(THREADS),--threads $(THREADS))

# make heads MODEL=models/qwen1.5-0.5b-chat-q4_k_m.gguf: the shipped roles' heads for that model (make quantize
# already does this), trained on the roles' own training texts (80 %; the other 20 % scored), written
# to models/<model stem>.heads/ where the roles find them.
heads: setup  ## train the sentiment and route heads for MODEL= (after editing a prompt, or a model built elsewhere)
	@test -n "$(MODEL)" || { echo "usage: make heads MODEL=models/your-model.gguf" >&2; exit 2; }
	$(BIN)/edgeqwen heads --model $(MODEL) $(if $(THREADS),--threads $(THREADS))

# make arm64-check [BOARD=pi5|pi4] [STEPS="doc tests"] [ARM64_CACHE=DIR] [ARM64_BUILD=cross|emulated] [WHEEL_BOARD=pi5]
# Not part of `make test`: a maintainer's check before a release (root, a Debian x86-64 host, PyPI and
# Debian's mirror; the first run builds an arm64 root and llama.cpp, ~30 min; later runs reuse both).
BOARD ?= pi5
STEPS ?= doc
arm64-check:  ## run docs/raspberry-pi.md's steps on an emulated Raspberry Pi CPU (qemu; BOARD=pi5 or pi4)
	BOARD=$(BOARD) $(if $(ARM64_CACHE),ARM64_CACHE=$(ARM64_CACHE)) $(if $(ARM64_BUILD),ARM64_BUILD=$(ARM64_BUILD)) \
	  $(if $(WHEEL_BOARD),WHEEL_BOARD=$(WHEEL_BOARD)) scripts/arm64_check.sh $(STEPS)

clean:  ## remove the virtual environment and caches (keeps models/)
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
