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

.PHONY: install demo test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel on this machine's disk, so that nothing
# later pulls a multi-GB CUDA build; deepspeed then builds against that torch.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade "pip<26" wheel setuptools
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	# DeepSpeed JIT-compiles its CPU shared-memory collective on first use (~45-80 s here): do it once
	# now (as DS_BUILD_SHM_COMM=1 would at build time) rather than inside the first training stage.
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
	    get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fmrilm pipeline --config demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check fmrilm tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
