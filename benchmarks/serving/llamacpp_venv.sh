#!/usr/bin/env bash
# Builds llama.cpp's native server (llama-server, continuous batching, --mmproj vision) for the
# `llamacpp` serving-benchmark contender, from the llama.cpp that llama-cpp-python's PyPI sdist
# vendors (nothing but the package registry is contacted: the sdist comes through pip).
# Also makes a small venv for the GGUF conversion (benchmarks/serving/gguf.py) with the vendored
# gguf-py, next to the main venv's torch/transformers (--system-site-packages).
#   bash benchmarks/serving/llamacpp_venv.sh [DIR]   (default .llamacpp)
# Result: DIR/bin/llama-server, DIR/bin/llama-mtmd-cli, DIR/src (the vendored llama.cpp),
# DIR/venv (conversion). Built for this CPU (GGML_NATIVE), no web UI, no downloads.
# Takes ~12 min on 2 (shared) cores: 691 s for the native build of llama-cpp-python 0.3.36's
# llama.cpp (the time is written to DIR/build-time.txt); ~400 MB in DIR.
set -euo pipefail
DIR=${1:-.llamacpp}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
MAIN_PY=${MAIN_PY:-.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
ready() {
    [ -x "$DIR/bin/llama-server" ] && "$DIR/bin/llama-server" --version >/dev/null 2>&1 \
        && [ -x "$DIR/venv/bin/python" ] && "$DIR/venv/bin/python" -c "import gguf, torch, transformers" 2>/dev/null
}
ready && { echo "$DIR ready"; exit 0; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. The sdist (pip download only; it is not installed: its own build would compile the
#    library without the server).
if [ ! -f "$DIR/src/CMakeLists.txt" ]; then
    rm -rf "$DIR/sdist" "$DIR/src"
    "$MAIN_PY" -m pip download --no-input -q --no-binary :all: --no-deps \
        "llama-cpp-python==$VERSION" -d "$DIR/sdist"
    tar -xzf "$DIR/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$DIR/sdist"
    mv "$DIR/sdist/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DIR/src"
    rm -rf "$DIR/sdist"
fi

# 2. The native build: static, CPU only, this machine's instruction set (AVX-512 BF16/VNNI
#    where present), OpenMP; the server's web UI neither built nor fetched.
if ! "$DIR/bin/llama-server" --version >/dev/null 2>&1; then
    command -v cmake >/dev/null || "$MAIN_PY" -m pip install --no-input -q cmake ninja
    GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
    start=$(date +%s)
    cmake -S "$DIR/src" -B "$DIR/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >"$DIR/cmake.log"
    cmake --build "$DIR/build" -j "$JOBS" --target llama-server llama-mtmd-cli llama-tokenize >"$DIR/build.log"
    mkdir -p "$DIR/bin"
    cp "$DIR/build/bin/llama-server" "$DIR/build/bin/llama-mtmd-cli" "$DIR/build/bin/llama-tokenize" "$DIR/bin/"
    echo "native build: $(( $(date +%s) - start )) s with $JOBS jobs" | tee "$DIR/build-time.txt"
fi

# 3. The conversion venv: the vendored gguf-py (the converter's own version) beside the main
#    venv's torch and transformers.
if ! { [ -x "$DIR/venv/bin/python" ] && "$DIR/venv/bin/python" -c "import gguf, torch, transformers" 2>/dev/null; }; then
    "$MAIN_PY" -c "import sys; print(sys.prefix)" >/dev/null
    "$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')" -m venv --system-site-packages "$DIR/venv"
    # the main venv's site-packages (torch, transformers, safetensors, numpy) through a .pth file
    "$MAIN_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
        > "$("$DIR/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/main-venv.pth"
    "$DIR/venv/bin/python" -m pip install --no-input -q --no-deps "$DIR/src/gguf-py"
fi
"$DIR/bin/llama-server" --version 2>&1 | head -2
"$DIR/venv/bin/python" -c "import gguf, torch, transformers; print('llamacpp ready: gguf', gguf.__file__)"
