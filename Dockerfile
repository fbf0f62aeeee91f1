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
COPY models/default /models/default

RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]" \
 && if [ "${EXTRAS}" = "cpu" ]; then pip uninstall -y torchvision torchaudio torchcodec; fi

# Serves the built-in model by default; to serve another, mount its directory (llava-hf
# layout) and point LLAVA_MODEL at it. Every flag of llava-serve can also be set as LLAVA_<FLAG>. The server listens on 0.0.0.0 here, so it
# refuses to start without a key: docker run -e LLAVA_API_KEY=secret ... (or
# -e LLAVA_ALLOW_UNAUTHENTICATED=1 behind a proxy that checks access).
ENV LLAVA_MODEL=/models/default \
    LLAVA_HOST=0.0.0.0 \
    LLAVA_PORT=8000 \
    LLAVA_KV_CACHE_GB=4
EXPOSE 8000
STOPSIGNAL SIGTERM
CMD ["llava-serve"]
