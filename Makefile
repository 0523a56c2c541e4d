# Fresh-machine entry points: `make demo` (set up, then train + evaluate the easy-vqa demo on the
# CPU) and `make test` (set up, then run the test suite). Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

# A torch and torchvision pair that import together (timm and open_clip_torch import torchvision).
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

LLAVA := llava-torch==1.2.2.post1 shortuuid==1.0.13   # shortuuid: imported by its eval scripts
LMMS_EVAL := lmms-eval==0.7.3   # its task utilities: the lmms_eval scoring convention's reference

.PHONY: setup demo test
setup: $(BIN)/.installed

$(BIN)/.installed: setup.cfg Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	# LLaVA-1.5's own code, which the reference tests import; it pins torch 2.1, hence --no-deps
	$(BIN)/pip install -q --no-deps $(LLAVA)
	# lmms-eval pins wandb and a model zoo (~7 GB): --no-deps, with what its evaluator imports in the test extra
	$(BIN)/pip install -q --no-deps $(LMMS_EVAL)
	touch $@

demo: setup
	$(BIN)/python -m lmm.train $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)
