"""torch.distributed helpers for a learner that runs as N ranks, and the command that starts them.

Only rank 0 talks to the rollout workers; it hands each step's batch to the other ranks with
`broadcast_samples`, and every rank then trains on its share (`learner.plan`). Nothing that came from the network
is pickled: samples travel as typed tensors (`broadcast_object_list` would unpickle on every rank).

Every helper works without an initialised process group (one process: rank 0 of 1), so the same
code path runs with and without the launcher. Collectives must be called by every rank in the
same order, with the same arguments apart from the values that only `src` provides.

With NCCL, collectives need tensors on the rank's current CUDA device: the helpers move them there
and back; with gloo they stay on the CPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Kinds of dataclass fields broadcast_samples can carry.
LIST_INT, LIST_FLOAT, INT, FLOAT, BOOL = "list[int]", "list[float]", "int", "float", "bool"
LIST_DTYPES = {LIST_INT: torch.int64, LIST_FLOAT: torch.float32}
# Scalars: float64 so that advantages and rewards arrive bit-exact; bools travel as 0/1.
SCALAR_DTYPES = {INT: torch.int64, FLOAT: torch.float64, BOOL: torch.int64}


def is_distributed() -> bool:
    """True once a process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 when torch.distributed is not initialised."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the rank that talks to rollout workers, logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_distributed():
        dist.barrier()


def comm_device() -> torch.device:
    """Where tensors handed to collectives must live: the current CUDA device under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """Broadcast a CPU tensor (filled on `src`, allocated with the right shape and dtype elsewhere); return it on the CPU."""
    on_device = tensor.to(comm_device())
    dist.broadcast(on_device, src=src)
    return on_device.cpu()


def broadcast_int(value: int | None, src: int = 0) -> int:
    """Return `src`'s `value` on every rank (an int64); `value` is ignored on the other ranks (pass None)."""
    if rank() == src and value is None:
        raise ValueError(f"broadcast_int: rank {src} is the source and must pass a value, not None")
    if not is_distributed():
        return int(value)
    tensor = torch.tensor([int(value) if rank() == src else 0], dtype=torch.int64)
    return int(_broadcast(tensor, src).item())


def all_reduce_sum(value: float) -> float:
    """Sum a Python number over all ranks (in float64) and return it on every rank; identity without a process group."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def all_reduce_max(value: float) -> float:
    """The largest of a Python number over all ranks, on every rank; identity without a process group."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def field_kinds(cls: type) -> list[tuple[str, str]]:
    """(name, kind) of each field of dataclass `cls`, kind being one of list[int], list[float], int, float, bool."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)  # resolves the string annotations of `from __future__ import annotations`
    kinds = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if not field.init:
            raise TypeError(f"{cls.__name__}.{field.name} has init=False; broadcast_samples rebuilds samples with cls(**fields)")
        if hint is bool:
            kind = BOOL
        elif hint is int:
            kind = INT
        elif hint is float:
            kind = FLOAT
        elif typing.get_origin(hint) is list and typing.get_args(hint) in ((int,), (float,)):
            kind = LIST_INT if typing.get_args(hint) == (int,) else LIST_FLOAT
        else:
            raise TypeError(
                f"{cls.__name__}.{field.name} is typed {hint!r}; broadcast_samples carries only "
                "list[int], list[float], int, float and bool fields"
            )
        kinds.append((field.name, kind))
    return kinds


def _pack_list_field(samples: list, cls: type, name: str, kind: str) -> tuple[list[int], torch.Tensor]:
    """Per-sample lengths and the flat CPU tensor of list field `name`."""
    values = [getattr(s, name) for s in samples]
    for i, v in enumerate(values):
        if not isinstance(v, list):
            raise TypeError(f"samples[{i}].{name} is a {type(v).__name__}, {cls.__name__} declares {kind}")
    lengths = [len(v) for v in values]
    flat = list(itertools.chain.from_iterable(values))
    if kind == LIST_FLOAT:
        return lengths, torch.tensor(flat, dtype=torch.float32)
    # Let torch infer the dtype first: asking for int64 directly would truncate stray floats silently.
    tensor = torch.tensor(flat) if flat else torch.empty(0, dtype=torch.int64)
    if tensor.dtype != torch.int64:
        raise TypeError(f"{cls.__name__}.{name} must hold ints only, found elements of dtype {tensor.dtype}")
    return lengths, tensor


def _pack_scalar_field(samples: list, cls: type, name: str, kind: str) -> torch.Tensor:
    values = [getattr(s, name) for s in samples]
    allowed = {INT: (int,), FLOAT: (int, float), BOOL: (bool,)}[kind]
    for i, v in enumerate(values):
        if not isinstance(v, allowed) or (kind == INT and isinstance(v, bool)):
            raise TypeError(f"samples[{i}].{name} is a {type(v).__name__}, {cls.__name__} declares {kind}")
    return torch.tensor([int(v) if kind == BOOL else v for v in values], dtype=SCALAR_DTYPES[kind])


def broadcast_samples(samples: list[T] | None, cls: type[T], src: int = 0) -> list[T]:
    """Send rank `src`'s list of `cls` dataclasses to every rank, as tensors (no pickling).

    `samples` is the list on `src` and ignored elsewhere (pass None); every rank passes the same
    `cls`, whose fields must be typed list[int], list[float], int, float or bool. Wire format, in
    broadcast order: the count (int64); the (count, number of list fields) int64 matrix of list
    lengths; one flat tensor per list field (int64 for list[int], float32 for list[float]); one
    tensor of `count` values per scalar field (int64 for int and bool, float64 for float).
    Zero-sized tensors are not sent: every rank knows their sizes already.

    Returns new `cls` objects on every rank, `src` included, decoded from the same tensors, so all
    ranks hold bit-identical data: ints, bools and float scalars exact, list[float] values rounded
    to float32. Without a process group (or with one rank) returns `list(samples)` unchanged.
    """
    kinds = field_kinds(cls)
    if rank() == src and samples is None:
        raise ValueError(f"broadcast_samples: rank {src} is the source and must pass the list of samples, not None")
    if world_size() == 1:
        return list(samples)

    list_fields = [(name, kind) for name, kind in kinds if kind in LIST_DTYPES]
    scalar_fields = [(name, kind) for name, kind in kinds if kind in SCALAR_DTYPES]
    sending = rank() == src
    if sending:
        for i, s in enumerate(samples):
            if not isinstance(s, cls):
                raise TypeError(f"samples[{i}] is a {type(s).__name__}, expected {cls.__name__}")
        packed = [_pack_list_field(samples, cls, name, kind) for name, kind in list_fields]
        flats = [flat for _, flat in packed]
        lengths = torch.tensor([lens for lens, _ in packed], dtype=torch.int64).reshape(len(list_fields), len(samples)).T
        scalars = [_pack_scalar_field(samples, cls, name, kind) for name, kind in scalar_fields]

    count = broadcast_int(len(samples) if sending else None, src)
    if count == 0:
        return []
    if not sending:
        lengths = torch.empty((count, len(list_fields)), dtype=torch.int64)
    if lengths.numel():
        lengths = _broadcast(lengths.contiguous(), src)
    totals = lengths.sum(dim=0).tolist()
    if not sending:
        flats = [torch.empty(total, dtype=LIST_DTYPES[kind]) for total, (_, kind) in zip(totals, list_fields)]
        scalars = [torch.empty(count, dtype=SCALAR_DTYPES[kind]) for _, kind in scalar_fields]
    flats = [_broadcast(flat, src) if flat.numel() else flat for flat in flats]
    scalars = [_broadcast(values, src) for values in scalars]

    columns: dict[str, list] = {}
    for j, (name, _) in enumerate(list_fields):
        values = flats[j].tolist()
        ends = itertools.accumulate(lengths[:, j].tolist())
        starts = itertools.chain([0], itertools.accumulate(lengths[:, j].tolist()))
        columns[name] = [values[a:b] for a, b in zip(starts, ends)]
    for (name, kind), values in zip(scalar_fields, scalars):
        columns[name] = [bool(v) for v in values.tolist()] if kind == BOOL else values.tolist()
    return [cls(**{name: columns[name][i] for name, _ in kinds}) for i in range(count)]


def parse_hostfile(path: str) -> dict[str, int]:
    """Host -> slots from a DeepSpeed (MPI-style) hostfile: one `HOST slots=N` line per node, `#` comments."""
    hosts: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\S+)\s+slots=(\d+)", line)
        if not match:
            raise ValueError(f"hostfile {path}: bad line {line!r}; write one `HOST slots=N` line per node")
        if match.group(1) in hosts:
            raise ValueError(f"hostfile {path}: {match.group(1)} is listed twice")
        hosts[match.group(1)] = int(match.group(2))
    if not hosts:
        raise ValueError(f"hostfile {path} lists no hosts; write one `HOST slots=N` line per node")
    return hosts


def learner_command(
    module_args: list[str],
    world_size: int,
    hostfile: str | None,
    master_port: int,
    python: str,
    module: str = "learner.main",
    master_addr: str | None = None,
    include: str | None = None,
) -> list[str]:
    """The argv that starts `python -m module *module_args` as `world_size` ranks.

    One rank and no hostfile: plain `python -m module ...`. Otherwise DeepSpeed's launcher, run by
    `python` itself (the `deepspeed` script next to it) because the launcher starts every rank with
    its own `sys.executable`:

        python .../deepspeed --num_gpus N --master_port P --no_local_rank --module MODULE ARGS

    `--num_gpus` counts CPU ranks too (the CPU accelerator otherwise offers one rank per NUMA node)
    and makes the launcher ignore CUDA_VISIBLE_DEVICES: ranks get GPUs 0..N-1 and LOCAL_RANK picks
    one. On GPUs the placement plan passes `include` instead (`localhost:2,3`: physical GPU ids,
    since DeepSpeed's launcher drops the CUDA_VISIBLE_DEVICES it was started with and sets each
    rank's own from this list). `--no_local_rank` keeps `--local_rank=K` out of MODULE's arguments;
    every rank reads RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from its environment.

    With a `hostfile` (`HOST slots=N` per line) the ranks are the hostfile's slots, which must add
    up to `world_size`; more than one host means pdsh over passwordless ssh from this machine, and
    the same repository and `python` paths on every node. `master_addr` is rank 0's address as the
    other nodes reach it; without it the launcher asks the first host for `hostname -I`.

    Stopping: signal the launcher's whole process group (start it with start_new_session=True and
    use os.killpg). On one node the `deepspeed` front end has no signal handler, so a signal to it
    alone kills only it and leaves the ranks running.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1 and hostfile is None:
        return [python, "-m", module, *module_args]
    launcher = Path(python).parent / "deepspeed"  # not resolved: a venv's python is a symlink out of the venv
    if not launcher.is_file():
        raise FileNotFoundError(f"no DeepSpeed launcher at {launcher}; install deepspeed into the environment of {python}")
    command = [python, str(launcher)]
    if hostfile is None:
        if include is not None and len(include.partition(":")[2].split(",")) != world_size:
            raise ValueError(f"--include {include} does not name {world_size} devices")
        command += ["--include", include] if include is not None else ["--num_gpus", str(world_size)]
    else:
        slots = sum(parse_hostfile(hostfile).values())
        if slots != world_size:
            raise ValueError(f"hostfile {hostfile} has {slots} slots in all but world_size is {world_size}; make them agree")
        command += ["--hostfile", hostfile]
        if master_addr is not None:
            command += ["--master_addr", master_addr]
    command += ["--master_port", str(master_port), "--no_local_rank", "--module", module, *module_args]
    return command
