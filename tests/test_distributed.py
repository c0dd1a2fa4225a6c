"""learner.distributed: sample broadcast over 2 gloo ranks, scalar collectives, the launcher command."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from learner import distributed as ld

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Record:
    tokens: list[int]
    logprobs: list[float]
    count: int
    advantage: float
    done: bool


@dataclass
class OnlyScalars:
    index: int
    reward: float
    truncated: bool


@dataclass
class OnlyLists:
    ids: list[int]
    weights: list[float]


def f32(values: list[float]) -> list[float]:
    return torch.tensor(values, dtype=torch.float32).tolist()


def make_records() -> list[Record]:
    return [
        Record([1, 2, 3], [-0.1, -2.5, 0.0], 3, 0.1, True),
        Record([], [], 0, -1.0 / 3.0, False),
        Record([-1, 0, 2**62, -(2**63)], [1e-30, -1e30, float("inf"), -0.0], -1, -1e300, True),
        Record(list(range(5000)), [i / 7 for i in range(5000)], 2**40, float("-inf"), False),
        Record([7], [math.pi], 0, 0.0, False),
    ]


def expected_records() -> list[Record]:
    """What every rank must receive: list[float] rounded to float32, everything else exact."""
    return [Record(r.tokens, f32(r.logprobs), r.count, r.advantage, r.done) for r in make_records()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=local_rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        assert (ld.rank(), ld.world_size(), ld.is_main()) == (local_rank, world, local_rank == 0)
        mine = local_rank == 0

        got = ld.broadcast_samples(make_records() if mine else None, Record)
        assert got == expected_records()
        assert all(type(r.done) is bool and type(r.count) is int and type(r.advantage) is float for r in got)

        assert ld.broadcast_samples([] if mine else None, Record) == []

        scalars = [OnlyScalars(-1, 0.1, True), OnlyScalars(0, 1e-300, False), OnlyScalars(2**63 - 1, -2.5, True)]
        assert ld.broadcast_samples(scalars if mine else None, OnlyScalars) == scalars

        lists = [OnlyLists([], []), OnlyLists([5, -5], [0.25, 0.1]), OnlyLists([], [])]
        assert ld.broadcast_samples(lists if mine else None, OnlyLists) == [
            OnlyLists([], []), OnlyLists([5, -5], f32([0.25, 0.1])), OnlyLists([], [])
        ]

        # Rank 1 as the source; rank 0's own list is ignored.
        from_one = [Record([9, 9], [0.5, 0.75], 2, 0.1, True)]
        assert ld.broadcast_samples(from_one if local_rank == 1 else make_records(), Record, src=1) == from_one

        assert ld.broadcast_int(-(2**62) if mine else None) == -(2**62)
        assert ld.broadcast_int(12345 if local_rank == 1 else 0, src=1) == 12345

        total = ld.all_reduce_sum(local_rank + 0.1)
        assert type(total) is float and total == 0.1 + 1.1
        assert ld.all_reduce_sum(3) == 6.0

        # The usual step: rank 0 broadcasts and every rank holds the same batch.
        batch = ld.broadcast_samples(make_records() if mine else None, Record)
        assert batch == expected_records()
        ld.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks():
    mp.spawn(_worker, args=(2, free_port()), nprocs=2, join=True)


def test_single_process():
    """Without the launcher (or with a one-rank group) every helper is the identity."""
    assert (ld.rank(), ld.world_size(), ld.is_main()) == (0, 1, True)
    records = make_records()
    assert ld.broadcast_samples(records, Record) == records
    assert ld.broadcast_samples([], Record) == []
    assert ld.broadcast_int(7) == 7
    assert ld.all_reduce_sum(2.5) == 2.5
    ld.barrier()
    with pytest.raises(ValueError, match="source"):
        ld.broadcast_samples(None, Record)
    with pytest.raises(ValueError, match="source"):
        ld.broadcast_int(None)


def test_field_kinds():
    assert ld.field_kinds(Record) == [
        ("tokens", "list[int]"), ("logprobs", "list[float]"), ("count", "int"), ("advantage", "float"), ("done", "bool")
    ]

    @dataclass
    class Bad:
        name: str

    with pytest.raises(TypeError, match="Bad.name"):
        ld.field_kinds(Bad)
    with pytest.raises(TypeError, match="not a dataclass"):
        ld.field_kinds(dict)


def test_pack_rejects_wrong_values():
    with pytest.raises(TypeError, match="ints only"):
        ld._pack_list_field([Record([1, 2.5], [], 0, 0.0, False)], Record, "tokens", "list[int]")
    with pytest.raises(TypeError, match="declares bool"):
        ld._pack_scalar_field([Record([], [], 0, 0.0, 1)], Record, "done", "bool")
    with pytest.raises(TypeError, match="declares int"):
        ld._pack_scalar_field([Record([], [], 1.5, 0.0, True)], Record, "count", "int")


@pytest.fixture
def fake_python(tmp_path) -> str:
    """A python path with a `deepspeed` script beside it, as in a virtual environment."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").touch()
    (tmp_path / "bin" / "deepspeed").touch()
    return str(tmp_path / "bin" / "python")


def test_learner_command_shapes(tmp_path, fake_python):
    args = ["--run-dir", "runs/x", "--model-path", "m"]
    assert ld.learner_command(args, 1, None, 29500, fake_python) == [fake_python, "-m", "learner.main", *args]

    deepspeed = str(Path(fake_python).parent / "deepspeed")
    assert ld.learner_command(args, 2, None, 29511, fake_python) == [
        fake_python, deepspeed, "--num_gpus", "2", "--master_port", "29511", "--no_local_rank", "--module", "learner.main", *args
    ]

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=2\n\nnode-b  slots=2 # second\n")
    assert ld.parse_hostfile(str(hostfile)) == {"node-a": 2, "node-b": 2}
    assert ld.learner_command(args, 4, str(hostfile), 29512, fake_python, master_addr="10.0.0.1") == [
        fake_python, deepspeed, "--hostfile", str(hostfile), "--master_addr", "10.0.0.1",
        "--master_port", "29512", "--no_local_rank", "--module", "learner.main", *args,
    ]
    # A hostfile with one rank still goes through the launcher.
    hostfile.write_text("localhost slots=1\n")
    assert ld.learner_command(args, 1, str(hostfile), 29513, fake_python)[2:4] == ["--hostfile", str(hostfile)]


def test_learner_command_errors(tmp_path, fake_python):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    with pytest.raises(ValueError, match="4 slots"):
        ld.learner_command([], 3, str(hostfile), 29500, fake_python)
    hostfile.write_text("node-a 2\n")
    with pytest.raises(ValueError, match="bad line"):
        ld.learner_command([], 2, str(hostfile), 29500, fake_python)
    with pytest.raises(FileNotFoundError, match="DeepSpeed launcher"):
        ld.learner_command([], 2, None, 29500, str(tmp_path / "python"))
    with pytest.raises(ValueError):
        ld.learner_command([], 0, None, 29500, fake_python)


def test_learner_command_parses_with_deepspeed_runner(fake_python):
    """DeepSpeed's own argument parser reads the command as meant: 2 ranks, -m MODULE, our args untouched."""
    from deepspeed.launcher.runner import parse_args

    args = ["--run-dir", "runs/with space", "--resume"]
    parsed = parse_args(ld.learner_command(args, 2, None, 29514, fake_python)[2:])
    assert (parsed.num_gpus, parsed.master_port, parsed.module, parsed.no_local_rank) == (2, 29514, True, True)
    assert (parsed.user_script, parsed.user_args) == ("learner.main", args)


def test_learner_command_on_planned_gpus_uses_include(fake_python):
    """The plan's --include replaces --num_gpus, and DeepSpeed's own parser picks exactly those GPUs."""
    from deepspeed.launcher.runner import parse_args, parse_inclusion_exclusion

    command = ld.learner_command(["--resume"], 2, None, 29515, fake_python, include="localhost:1,3")
    assert command[2:6] == ["--include", "localhost:1,3", "--master_port", "29515"] and "--num_gpus" not in command
    parsed = parse_args(command[2:])
    assert parse_inclusion_exclusion({"localhost": 4}, parsed.include, parsed.exclude) == {"localhost": [1, 3]}
    with pytest.raises(ValueError, match="does not name 3 devices"):
        ld.learner_command([], 3, None, 29500, fake_python, include="localhost:0,1")


PROBE = textwrap.dedent(
    """
    from __future__ import annotations
    import json, os, sys, time
    from dataclasses import dataclass
    import deepspeed, torch
    from learner import distributed as ld

    @dataclass
    class Item:
        ids: list[int]
        score: float
        ok: bool

    deepspeed.init_distributed(dist_backend="gloo")
    if os.environ.get("PROBE_FAIL") and ld.rank() == 1:
        sys.exit(3)
    if os.environ.get("PROBE_FAIL"):
        time.sleep(120)  # the launcher must end this rank once rank 1 has failed
    items = ld.broadcast_samples([Item([1, -1], 0.1, True), Item([], -2.0, False)] if ld.is_main() else None, Item)
    env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    report = json.dumps({
        "rank": ld.rank(), "world": ld.world_size(), "env": env, "argv": sys.argv[1:],
        "sum": ld.all_reduce_sum(ld.rank() + 1), "items": [[i.ids, i.score, i.ok] for i in items],
    })
    # one file per rank: two ranks printing to one pipe can interleave within a line
    with open(os.path.join(os.environ["PROBE_OUT"], f"rank-{ld.rank()}.json"), "w") as handle:
        handle.write(report)
    # leave together: a rank that exits while the other is still inside a collective can abort it
    ld.barrier()
    import torch.distributed

    torch.distributed.destroy_process_group()
    """
)


def launch_probe(tmp_path: Path, port: int, **extra_env: str) -> tuple[int, str]:
    (tmp_path / "ds_probe_module.py").write_text(PROBE)
    command = ld.learner_command(["--tag", "a b"], 2, None, port, sys.executable, module="ds_probe_module")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               PROBE_OUT=str(tmp_path), **extra_env)
    # A new session, so that a time-out can end the launcher and its ranks together (see learner_command).
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the launcher did not finish:\n{out}")
    return proc.returncode, out


@pytest.mark.e2e
def test_deepspeed_launcher_runs_two_cpu_ranks(tmp_path):
    port = free_port()
    returncode, out = launch_probe(tmp_path, port)
    assert returncode == 0, out
    reports = sorted((json.loads(path.read_text()) for path in tmp_path.glob("rank-*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1], out
    for r in reports:
        assert r["world"] == 2 and r["argv"] == ["--tag", "a b"]
        assert r["env"] == {"RANK": str(r["rank"]), "LOCAL_RANK": str(r["rank"]), "WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        assert r["sum"] == 3.0
        assert r["items"] == [[[1, -1], 0.1, True], [[], -2.0, False]]


@pytest.mark.e2e
def test_deepspeed_launcher_ends_all_ranks_when_one_fails(tmp_path):
    returncode, out = launch_probe(tmp_path, free_port(), PROBE_FAIL="1")
    assert returncode == 3, out  # the failed rank's exit code, and rank 0 was ended rather than left sleeping
