"""The virtual environment `bench/vs_trl.py` runs TRL in: `.venv-trl/` at the repository root.

Standalone (no system site-packages), so TRL's requirements never touch the project's `.venv`.
torch is installed first and pinned to the project's CPU build, and stays pinned by a pip
constraint while TRL installs: any other torch requirement makes pip fetch the multi-GB CUDA
build. transformers and accelerate are pinned to the project's versions so that both sides run
the same model code. A stamp file named after the pins makes the install idempotent.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH_PIN = "torch==2.13.0"  # the project's CPU build (2.13.0+cpu), as scripts/setup.sh installs it
TRL_PINS = ("trl==1.16.0", "transformers==5.19.0", "accelerate==1.15.0")


def stamp_name() -> str:
    digest = hashlib.sha256("\n".join((TORCH_PIN, *TRL_PINS)).encode()).hexdigest()[:16]
    return f".installed-{digest}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_trl_venv(venv: Path, skip_install: bool = False) -> tuple[Path, float]:
    """The TRL venv's python and the seconds the install took (0 when it was already there)."""
    python = venv_python(venv)
    if (venv / stamp_name()).is_file():
        return python, 0.0
    if skip_install:
        if python.is_file():
            return python, 0.0
        raise SystemExit(f"error: --skip-install, but {venv} has no python; run once without --skip-install")
    start = time.perf_counter()
    print(f"[vs_trl] installing {', '.join(TRL_PINS)} and {TORCH_PIN} into {venv} (once)", flush=True)
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, TORCH_PIN], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="torch-pin-") as constraint:
        constraint.write(TORCH_PIN + "\n")
        constraint.flush()
        subprocess.run([*pip, "-c", constraint.name, *TRL_PINS], check=True)
    for old in venv.glob(".installed-*"):
        old.unlink()
    (venv / stamp_name()).write_text("\n".join((TORCH_PIN, *TRL_PINS)) + "\n")
    return python, time.perf_counter() - start
