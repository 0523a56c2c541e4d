# Fresh-machine entry points: `make demo` (set up, then train + evaluate the easy-vqa demo on the
# CPU) and `make test` (set up, then run the test suite). Both create ./.venv on first use: the demo
# installs lmm's requirements only (setup-core), the tests add the test extra and the reference
# packages (setup); `make test` also creates ./.venv-lmms-eval for the tests that need the
# [lmms-eval] extra's own environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# Test workers (pytest-xdist): one per core, at most 4; JOBS=0 runs the suite in this one process.
JOBS ?= auto --maxprocesses=4
# worksteal: a worker that runs out of tests takes half of another's queue, so the long tests, which
# conftest.py puts first, keep one worker busy while the other gets through the short ones.
PARALLEL := -n $(JOBS) --dist worksteal

# Installs into ./.venv go through uv: it fetches and unpacks the ~20 wheels of torch's CUDA build in
# parallel, so a fresh `.venv` for the demo took 34 s instead of 155 s with pip on the 2-core machine
# (same package versions; experiments/easyvqa_demo/README.md). uv reads no pip.conf: behind a private
# index, set UV_INDEX_URL / UV_EXTRA_INDEX_URL, or run `make INSTALLER=pip ...`.
INSTALLER ?= uv
UV := uv==0.13.9
ifeq ($(INSTALLER),uv)
INSTALL = $(BIN)/uv pip install -q --python $(BIN)/python
else ifeq ($(INSTALLER),pip)
INSTALL = $(BIN)/pip install -q
else
$(error INSTALLER=$(INSTALLER): valid choices are uv, pip)
endif

# A torch and torchvision pair that import together (timm and open_clip_torch import torchvision).
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

LLAVA := llava-torch==1.2.2.post1 shortuuid==1.0.13   # shortuuid: imported by its eval scripts
LMMS_EVAL := lmms-eval==0.7.3   # its task utilities: the lmms_eval scoring convention's reference

# The [lmms-eval] extra resolved with lmm as a user installs it (`pip install lmm[lmms-eval]`): it
# pins wandb==0.25.0 (hence protobuf<7) and brings datasets and pyarrow. Layered on ./.venv (the .pth
# line puts .venv's packages after its own), so only what differs is installed (about a minute).
EXTRA_VENV ?= .venv-lmms-eval
EXTRA_BIN := $(EXTRA_VENV)/bin
# the tests that run in it: tests/lmms_eval_env.txt
EXTRA_TESTS = $(shell grep -v '^\#' tests/lmms_eval_env.txt)

.PHONY: setup setup-core setup-lmms-eval demo test test-fast test-lmms-eval
setup: $(BIN)/.installed
setup-core: $(BIN)/.installed-core
setup-lmms-eval: $(EXTRA_BIN)/.installed

# What the demo runs on: torch, lmm's requirements and the eval extra (openpyxl: the MMBench-format
# submission's .xlsx), no test, notebook or reference packages, so a first `make demo` spends its
# minutes training rather than installing.
$(BIN)/.installed-core: setup.cfg Makefile
	$(PYTHON) -m venv $(VENV)
	$(if $(filter uv,$(INSTALLER)),$(BIN)/pip install -q $(UV))
	$(INSTALL) $(TORCH)
	$(INSTALL) -e ".[eval]"
	touch $@

$(BIN)/.installed: $(BIN)/.installed-core
	$(INSTALL) -e ".[test]"
	# LLaVA-1.5's own code, which the reference tests import; it pins torch 2.1, hence --no-deps
	$(INSTALL) --no-deps $(LLAVA)
	# lmms-eval pins wandb and a model zoo (~7 GB): --no-deps, with what its evaluator imports in the test extra
	$(INSTALL) --no-deps $(LMMS_EVAL)
	# Bytecode for every module, once: uv installs none, and where PYTHONDONTWRITEBYTECODE is set (these
	# machines) every process of the suite compiled torch, transformers and Lightning again: importing
	# lmm.train.run took 15 s instead of 6 s. About 35 s here, for the ~100 processes the suite starts.
	# (A file written for a newer Python, such as torch's py312 test helpers, does not compile: ignored.)
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" lmm tests || true
	touch $@

demo: setup-core
	$(BIN)/python -m lmm.train $(ARGS)

$(EXTRA_BIN)/.installed: $(BIN)/.installed
	$(PYTHON) -m venv $(EXTRA_VENV)
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(EXTRA_BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_lmm_base.pth"
	$(EXTRA_BIN)/pip install -q -e ".[lmms-eval]"
	touch $@

# The whole suite, the tests of the lmms-eval environment included (tests/test_lmms_eval_environment.py
# runs them in .venv-lmms-eval as one test, beside the others); it prints the 15 slowest tests
# (README, Tests: the budget, and how to find where the time went when it grows).
test: setup setup-lmms-eval
	LMM_TEST_EXTRAS_ENV=1 $(BIN)/python -m pytest $(PARALLEL) --durations=15 $(PYTEST_ARGS)

# While changing code: every module's unit tests on tiny models, without the end-to-end runs (`slow`).
test-fast: setup
	$(BIN)/python -m pytest $(PARALLEL) --durations=15 -m "not slow" $(PYTEST_ARGS)

# LMM_TEST_EXTRAS=1: a missing package of the extra fails these tests instead of skipping them
test-lmms-eval: setup-lmms-eval
	LMM_TEST_EXTRAS=1 $(EXTRA_BIN)/python -m pytest -p no:cacheprovider --durations=15 $(EXTRA_TESTS)
