"""scripts/setup.sh decides its branch (CPU or CUDA) and never reuses a .venv made for the other one."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).parents[1]


def sandbox(tmp_path: Path, gpu: bool, venv_torch: str | None) -> tuple[Path, dict]:
    """A copy of the script and pyproject, a PATH whose nvidia-smi does or does not see a GPU, and a
    .venv whose python answers the script's torch question with `venv_torch` (cpu or cuda)."""
    (tmp_path / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "constraints", tmp_path / "constraints")
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexit {0 if gpu else 1}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    if venv_torch:
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        # it also logs its arguments, so a test can see which pip commands the script ran
        (tmp_path / ".venv" / "bin" / "python").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/python-calls.log\necho {venv_torch}\n')
        (tmp_path / ".venv" / "bin" / "python").chmod(0o755)
    # PYTHON fails: the script stops where it would start installing
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": "false"}
    return tmp_path, env


def stamp_hash(root: Path, branch: str = "cuda") -> str:
    """The CPU install also hashes its constraints file: new constraints, a new install."""
    data = (root / "pyproject.toml").read_bytes() + (root / "scripts" / "setup.sh").read_bytes()
    if branch == "cpu":
        data += (root / "constraints" / "cpu.txt").read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def run(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=60)


def test_a_cpu_venv_is_recreated_on_a_gpu_machine(tmp_path):
    root, env = sandbox(tmp_path, gpu=True, venv_torch="cpu")
    (root / ".venv" / f".setup-cpu-{stamp_hash(root)}").touch()  # done before, on a CPU node
    done = run(root, env)
    assert "holds the cpu build of torch but this machine needs the cuda one: recreating .venv" in done.stdout
    assert not (root / ".venv").exists() and done.returncode != 0  # gone; the fake PYTHON stopped the rebuild


def test_the_stamp_of_this_branch_skips_everything(tmp_path):
    root, env = sandbox(tmp_path, gpu=True, venv_torch="cuda")
    (root / ".venv" / f".setup-cuda-{stamp_hash(root)}").touch()
    done = run(root, env)
    assert done.returncode == 0 and done.stdout == ""
    root2, env2 = sandbox(tmp_path / "cpu", gpu=False, venv_torch="cpu")
    (root2 / ".venv" / f".setup-cuda-{stamp_hash(root2)}").touch()  # a stamp of the other branch is not this one's
    assert "recreating" not in run(root2, env2).stdout and (root2 / ".venv").exists()


def test_a_cpu_stamp_covers_the_constraints_file(tmp_path):
    root, env = sandbox(tmp_path, gpu=False, venv_torch="cpu")
    (root / ".venv" / f".setup-cpu-{stamp_hash(root, 'cpu')}").touch()
    done = run(root, env)
    assert done.returncode == 0 and done.stdout == ""  # same constraints: nothing to do
    with (root / "constraints" / "cpu.txt").open("a") as constraints:
        constraints.write("somepackage==1.0\n")
    assert "[setup] no GPU: installing" in run(root, env).stdout  # changed constraints: installs again


def pip_installs(root: Path) -> list[str]:
    return [line for line in (root / "python-calls.log").read_text().splitlines() if line.startswith("-m pip install")]


def test_the_cpu_install_uses_the_constraints_and_the_cuda_install_pins_vllm_and_torch_only(tmp_path):
    root, env = sandbox(tmp_path / "cpu", gpu=False, venv_torch="cpu")
    assert run(root, env).returncode == 0
    installs = pip_installs(root)
    assert len(installs) == 5 and all(line.endswith("-c constraints/cpu.txt") for line in installs), installs
    root, env = sandbox(tmp_path / "cuda", gpu=True, venv_torch="cuda")
    assert run(root, env).returncode == 0
    installs = pip_installs(root)
    assert "-m pip install -q vllm==0.32.0 torch==2.13.0" in installs and not any("-c " in line for line in installs), installs
