"""The placement plan: which process of a run goes on which device, with what memory and dtypes.

`make_plan` is a pure function of the machine (its GPUs and cores, from `rl.devices`) and the
config; the launcher prints its result, refuses an impossible one before any process starts, and
hands each child its part through the environment (`child_environment`). Rules:

- The learner's local ranks take GPUs 0..L-1 (DeepSpeed's order), the local rollout workers the
  GPUs after them, round-robin. A worker goes onto a learner's GPU only when no GPU is left and
  `rollout.share_gpu_with_learner` allows it (unset: allowed on a single-GPU machine only, the
  usual first run).
- Rollout engines on one GPU split a budget: 0.9 of its memory (vLLM's own default for one
  engine), or 0.4 when the learner trains on the same GPU (it keeps the rest). A user's per-engine
  budget (`rollout.gpu_memory_utilization` or `rollout.gpu_memory_gib`) is checked against the
  same GPU's total instead.
- dtypes: training bf16 where every learner GPU supports it (compute capability 8.0, Ampere, and
  later), else fp32; rollout bf16 on Ampere and later, fp16 before (vLLM refuses bf16 there), fp32
  on CPU. vLLM compiles the model (and captures CUDA graphs on GPU) unless `rollout.enforce_eager`
  says otherwise; on CPU, inductor needs a C++ compiler, so without one the engine runs eager.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rl.config import Config

# What the launcher sets in a child's environment (read by rl.devices in that child).
MEMORY_ENV = "RL_GPU_MEMORY_UTILIZATION"
START_LOCK_ENV = "RL_GPU_START_LOCK"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
NO_COMPILER_NOTE = ("no C++ compiler found (g++, or $CXX), so vLLM runs eager on CPU, about 1.3x slower generation: "
                    "install g++ to compile, or set rollout.enforce_eager=true to silence this")

DEDICATED_BUDGET = 0.90  # of a GPU that only rollout engines use, split among them
SHARED_BUDGET = 0.40  # of a GPU the learner also trains on
MAX_ENGINES_SHARE = 0.95  # the most that engines' budgets on one GPU may add up to (CUDA contexts need the rest)
LEARNER_MIN_SHARE = 0.30  # what engines must leave to a learner on the same GPU
AMPERE = (8, 0)


class PlanError(ValueError):
    """No plan fits this machine; the message says what to change."""


@dataclass(frozen=True)
class Gpu:
    index: int  # as this machine's CUDA runtime numbers it (after the caller's CUDA_VISIBLE_DEVICES)
    name: str
    memory_gib: float
    capability: tuple[int, int]
    visible_id: str = ""  # how a child's CUDA_VISIBLE_DEVICES names it (the caller's own entry); default str(index)

    @property
    def bf16(self) -> bool:
        return tuple(self.capability) >= AMPERE

    @property
    def device_id(self) -> str:
        return self.visible_id or str(self.index)


@dataclass(frozen=True)
class Machine:
    gpus: tuple[Gpu, ...] = ()
    cores: tuple[int, ...] = (0,)  # the cores this launcher may run on
    cpu_count: int = 1  # os.cpu_count(), which the learner divides among its local ranks
    source: str = "torch"  # where the GPU list came from (torch, RL_FAKE_GPUS)
    cpp_compiler: str | None = "g++"  # the C++ compiler torch inductor would use (None: none found)


@dataclass(frozen=True)
class Placement:
    name: str  # "learner rank 0", "local-0"
    gpu: int | None = None  # index into Machine.gpus; None: the CPU
    memory_fraction: float | None = None  # a rollout engine's share of its GPU (vLLM's gpu_memory_utilization)
    cores: tuple[int, ...] | None = None  # CPU pinning; None: not pinned
    threads: int = 1  # torch threads (CPU)


@dataclass(frozen=True)
class Plan:
    machine: Machine
    learner: tuple[Placement, ...]
    workers: tuple[Placement, ...]
    train_dtype: str
    rollout_dtype: str
    enforce_eager: bool
    world_size: int  # all learner ranks, this machine's and other nodes'
    hostfile: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def on_gpu(self) -> bool:
        return bool(self.machine.gpus)

    def engines_on(self, gpu: int) -> list[Placement]:
        return [w for w in self.workers if w.gpu == gpu]

    def learner_include(self) -> str | None:
        """DeepSpeed's --include for several local GPU ranks (it sets each rank's CUDA_VISIBLE_DEVICES itself)."""
        if not self.on_gpu or self.hostfile or self.world_size < 2:
            return None
        return "localhost:" + ",".join(self.machine.gpus[p.gpu].device_id for p in self.learner)


def make_plan(machine: Machine, config: Config, local_ranks: int | None = None,
              worker_cores: tuple[tuple[int, ...] | None, ...] = ()) -> Plan:
    """The run's placement on `machine`; raises PlanError (one line: what to change) when none fits.

    `local_ranks`: learner ranks on this machine (default learner.world_size; a hostfile run passes
    this node's slots). `worker_cores`: each local worker's CPU pinning (rl.launcher.worker_cores),
    used on CPU only.
    """
    ranks = config.learner.world_size if local_ranks is None else local_ranks
    if machine.gpus:
        return gpu_plan(machine, config, ranks)
    return cpu_plan(machine, config, ranks, worker_cores)


def learner_threads(config: Config, machine: Machine, ranks: int) -> int:
    return config.train.threads or max(1, machine.cpu_count // max(1, ranks))  # what learner/loop.py sets


def cpu_plan(machine: Machine, config: Config, ranks: int, worker_cores) -> Plan:
    if config.train.dtype == "bfloat16":
        raise PlanError("train.dtype=bfloat16 needs a GPU and this machine has none; set train.dtype=auto (float32 on CPU)")
    rollout = config.rollout
    learner = tuple(Placement(f"learner rank {r}", threads=learner_threads(config, machine, ranks)) for r in range(ranks))
    workers = []
    for i in range(rollout.num_workers):
        cores = worker_cores[i] if i < len(worker_cores) else None
        if cores:
            threads = len(cores)
        elif rollout.cpu_threads:
            from rollout.engine import parse_cpu_list  # light: vLLM is imported only when an engine starts

            threads = len(parse_cpu_list(rollout.cpu_threads))
        else:
            threads = len(machine.cores)
        workers.append(Placement(f"local-{i}", cores=tuple(cores) if cores else None, threads=threads))
    notes = []
    if rollout.num_workers and ranks:
        notes.append("learner and rollout workers share the CPU cores")
    if rollout.num_workers and rollout.enforce_eager is None and machine.cpp_compiler is None:
        notes.append(NO_COMPILER_NOTE)
    eager = enforce_eager_for(rollout.enforce_eager, on_gpu=False, cpp_compiler=machine.cpp_compiler)
    return Plan(machine, learner, tuple(workers), train_dtype="float32", rollout_dtype=rollout_dtype_for(rollout.dtype, None),
                enforce_eager=eager, world_size=config.learner.world_size,
                hostfile=config.learner.hostfile is not None, notes=tuple(notes) + remote_note(config))


def gpu_plan(machine: Machine, config: Config, ranks: int) -> Plan:
    gpus, rollout = machine.gpus, config.rollout
    if ranks > len(gpus):
        where = f"the hostfile gives this machine {ranks} slots" if config.learner.hostfile else f"learner.world_size={ranks}"
        most = f"learner.world_size={len(gpus)}" + (" or less" if len(gpus) > 1 else "")
        raise PlanError(f"{where} but this machine has {len(gpus)} GPU{'s' * (len(gpus) != 1)}: set {most} (one rank per GPU), "
                        "or spread the ranks over nodes with learner.hostfile")
    learner_gpus = list(range(ranks))
    named = [gpus[g].device_id for g in learner_gpus if not gpus[g].device_id.isdigit()]
    if ranks > 1 and not config.learner.hostfile and named:
        raise PlanError(f"CUDA_VISIBLE_DEVICES names GPU {named[0]!r} by UUID but DeepSpeed's --include takes GPU numbers: "
                        "list the GPUs by number in CUDA_VISIBLE_DEVICES")
    threads = learner_threads(config, machine, ranks)
    learner = tuple(Placement(f"learner rank {r}", gpu=r, threads=threads) for r in learner_gpus)
    targets, shared, notes = worker_gpus(machine, config, ranks)
    assignment = [targets[i % len(targets)] for i in range(rollout.num_workers)] if targets else []
    workers = []
    for i, g in enumerate(assignment):
        workers.append(Placement(f"local-{i}", gpu=g, memory_fraction=engine_budget(config, gpus[g], assignment.count(g), shared)))
    for g in sorted(set(assignment)):
        check_budgets(gpus[g], [w.memory_fraction for w in workers if w.gpu == g], shared, config)
    return Plan(machine, learner, tuple(workers), train_dtype=train_dtype_for(config.train.dtype, [gpus[g] for g in learner_gpus]),
                rollout_dtype=rollout_dtype_for(rollout.dtype, [gpus[g] for g in sorted(set(assignment))] or list(gpus)),
                enforce_eager=enforce_eager_for(rollout.enforce_eager, on_gpu=True), world_size=config.learner.world_size,
                hostfile=config.learner.hostfile is not None, notes=tuple(notes) + remote_note(config))


def worker_gpus(machine: Machine, config: Config, ranks: int) -> tuple[list[int], bool, list[str]]:
    """The GPUs local workers go on (round-robin), whether they share them with the learner, and a note."""
    count, share = config.rollout.num_workers, config.rollout.share_gpu_with_learner
    free = list(range(ranks, len(machine.gpus)))
    if count == 0 or free:
        return free, False, []
    if share is False or (share is None and len(machine.gpus) > 1):
        n = len(machine.gpus)
        raise PlanError(
            f"the learner's {ranks} rank{'s' * (ranks != 1)} take all {n} GPU{'s' * (n != 1)} and no GPU is left for "
            f"rollout.num_workers={count}: set learner.world_size={max(1, n - 1)} to free a GPU, or rollout.num_workers=0 and "
            "join workers from other machines, or rollout.share_gpu_with_learner=true"
        )
    why = "rollout.share_gpu_with_learner=true" if share else "a single GPU (rollout.share_gpu_with_learner unset)"
    whose = "its" if ranks == 1 else "each GPU's"
    return list(range(ranks)), True, [f"{why}: the rollout engines run on the learner's GPU{'s' * (ranks != 1)} and take "
                                      f"{SHARED_BUDGET:.2f} of {whose} memory between them; the learner keeps the rest"]


def engine_budget(config: Config, gpu: Gpu, engines: int, shared: bool) -> float:
    """One engine's share of `gpu` (vLLM's gpu_memory_utilization), rounded down to 0.001."""
    rollout = config.rollout
    if rollout.gpu_memory_utilization is not None:
        return rollout.gpu_memory_utilization
    if rollout.gpu_memory_gib is not None:
        return rollout.gpu_memory_gib / gpu.memory_gib
    return int((SHARED_BUDGET if shared else DEDICATED_BUDGET) / engines * 1000) / 1000


def check_budgets(gpu: Gpu, budgets: list[float], shared: bool, config: Config) -> None:
    limit = MAX_ENGINES_SHARE - (LEARNER_MIN_SHARE if shared else 0.0)
    total = sum(budgets)
    if total <= limit + 1e-9:
        return
    n = len(budgets)
    what = (f"rollout.gpu_memory_gib={config.rollout.gpu_memory_gib:g}" if config.rollout.gpu_memory_gib is not None
            else f"rollout.gpu_memory_utilization={budgets[0]:g}")
    fix = (f"rollout.gpu_memory_gib={int(limit / n * gpu.memory_gib * 10) / 10:g}" if config.rollout.gpu_memory_gib is not None
           else f"rollout.gpu_memory_utilization={int(limit / n * 1000) / 1000:g}")
    beside = f" beside the learner (which keeps at least {LEARNER_MIN_SHARE:.2f})" if shared else ""
    raise PlanError(f"{what} x {n} engine{'s' * (n != 1)} on GPU {gpu.index} ({gpu.memory_gib:.0f} GiB) is {total:.2f} of its memory, "
                    f"more than {limit:.2f}{beside}: set {fix} or less, or use fewer rollout.num_workers")


def gpus_before_ampere(key: str, requested: str, gpus: list[Gpu], why: str, instead: str) -> list[Gpu]:
    """The GPUs without bf16; a request for bfloat16 on one of them is refused with the fix."""
    old = [g for g in gpus if not g.bf16]
    if requested == "bfloat16" and old:
        raise PlanError(f"{key}=bfloat16 needs compute capability 8.0 (Ampere) but GPU {old[0].index} ({old[0].name}) has "
                        f"{old[0].capability[0]}.{old[0].capability[1]}{why}: set {key}=auto ({instead})")
    return old


def train_dtype_for(requested: str, gpus: list[Gpu]) -> str:
    """The learner's dtype on `gpus` (none: the CPU)."""
    if not gpus:
        if requested == "bfloat16":
            raise PlanError("train.dtype=bfloat16 needs a GPU and this machine has none; set train.dtype=auto (float32 on CPU)")
        return "float32"
    old = gpus_before_ampere("train.dtype", requested, gpus, "", "float32 there")
    if requested == "auto":
        return "float32" if old else "bfloat16"
    return requested


def rollout_dtype_for(requested: str, gpus: list[Gpu] | None) -> str:
    """The rollout engines' dtype on `gpus` (None or empty: the CPU)."""
    if not gpus:
        return "float32" if requested == "auto" else requested  # this kind of CPU has no bf16 hardware: fp32 is faster
    old = gpus_before_ampere("rollout.dtype", requested, gpus, " and vLLM refuses it there", "float16")
    if requested == "auto":
        return "float16" if old else "bfloat16"
    return requested


def enforce_eager_for(requested: bool | None, on_gpu: bool, cpp_compiler: str | None = "g++") -> bool:
    """Unset: compiled, as vLLM does by default. On GPU with CUDA graphs (the in-place weight copy keeps
    tensor addresses, so they stay valid); on CPU with inductor's C++ kernels, so eager when no C++
    compiler is found (generation about 1.3x slower, see docs/benchmarks.md)."""
    if requested is not None:
        return requested
    return False if on_gpu else cpp_compiler is None


def remote_note(config: Config) -> tuple[str, ...]:
    wanted = config.transport.wait_for_workers
    if config.rollout.num_workers == 0:
        return (f"no local rollout workers: the learner waits for {wanted or 1} worker(s) from other machines "
                "(rl rollout --connect ADDRESS, once per GPU there)",)
    if wanted and wanted > config.rollout.num_workers:
        return (f"the learner waits for {wanted - config.rollout.num_workers} more worker(s) from other machines",)
    return ()


def child_environment(plan: Plan, process: Placement, lock_dir: Path | None = None) -> dict[str, str | None]:
    """The variables the launcher sets (a value) or removes (None) in `process`'s environment."""
    if not plan.on_gpu:
        return {}
    if process in plan.learner:
        if plan.learner_include() is not None or plan.hostfile:
            return {VISIBLE_ENV: None}  # DeepSpeed's launcher sets each rank's CUDA_VISIBLE_DEVICES from --include or the hostfile
        return {VISIBLE_ENV: plan.machine.gpus[process.gpu].device_id}
    gpu = plan.machine.gpus[process.gpu]
    env = {VISIBLE_ENV: gpu.device_id, MEMORY_ENV: f"{process.memory_fraction:.4f}"}
    if lock_dir is not None:  # engines on one GPU start one at a time: vLLM measures free memory while it starts
        env[START_LOCK_ENV] = str(lock_dir / f"gpu-{gpu.device_id}.lock")
    return env
