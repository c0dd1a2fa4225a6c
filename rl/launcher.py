"""`rl train`: validate everything, then start the learner and the rollout workers and watch them.

The run ends cleanly on success, on Ctrl-C and when any process dies: every child runs in its own
process group (so vLLM's or DeepSpeed's own children go with it) and asks the kernel to signal it
if this launcher dies (PR_SET_PDEATHSIG), so no process outlives the run.

Each child's output goes to RUN/logs/learner.log or RUN/logs/worker-N.log; the console shows only
our own lines, the progress bar, the tables and errors (rl/console.py, rl/console_relay.py), or
everything with `rl train -v`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from envs.source import TASKS_FILE, build_task_source, check_prompts_fit, check_run_inputs, save_splits
from rl.config import Config, to_yaml
from rl.console import LOG_FILE_ENV, RL_CONSOLE_ENV
from rl.console_relay import CONSOLE, ProcessLog, relay_output
from rl.devices import FAKE_ENV, detect_machine
from rl.models import resolve_model
from rl.placement import VISIBLE_ENV, Plan, PlanError, child_environment, make_plan
from rl.plan_report import format_plan
from rl.process_env import DISTRIBUTED_ENV

LEARNER_CHECKPOINT_GRACE_S = 600.0  # writing a checkpoint of a large model takes a while


def set_parent_death_signal() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env(changes: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment for a child, with the plan's `changes` (None: remove the variable)."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and k != FAKE_ENV}
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")  # its INFO lines go to the log file, not the console
    return env


def spawn(args: list[str], cores: list[int] | None = None, env: dict[str, str | None] | None = None,
          log: ProcessLog | None = None, verbose: bool = False) -> subprocess.Popen:
    """Start a child; with `log`, its stdout and stderr go to that file and, filtered (all with `verbose`), to the console."""
    def prepare_child() -> None:
        set_parent_death_signal()
        if cores:
            os.sched_setaffinity(0, cores)

    if log is None:
        return subprocess.Popen(args, env=child_env(env), start_new_session=True, preexec_fn=prepare_child)
    env = {**(env or {}), RL_CONSOLE_ENV: None if verbose else "1", LOG_FILE_ENV: str(log.path)}
    proc = subprocess.Popen(args, env=child_env(env), start_new_session=True, preexec_fn=prepare_child,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.log, proc.relays = log, relay_output(proc, log, verbose)
    return proc


def finish_output(processes: list[subprocess.Popen]) -> None:
    """Wait for the last lines of the (stopped) children to reach their logs and the console."""
    for proc in processes:
        for relay in getattr(proc, "relays", ()):
            relay.join(timeout=10)
        if getattr(proc, "log", None) is not None:
            proc.log.close()


def exit_summary(proc: subprocess.Popen) -> str:
    """'(ValueError: why; the traceback is in RUN/logs/learner.log)', or '' for a child without a log."""
    log = getattr(proc, "log", None)
    if log is None:
        return ""
    for relay in proc.relays:
        relay.join(timeout=5)  # the traceback's last lines may still be in the pipe
    error = log.last_exception()
    return f" ({error}; the traceback is in {log.path})" if error else f" (its log: {log.path})"


def worker_cores(index: int, count: int, config: Config) -> list[int] | None:
    """The cores local CPU worker `index` of `count` runs on: an even share of this machine's, so that
    several vLLM engines do not each spin threads on every core (measured on 2 cores: two workers
    sharing both cores generated 3x slower than one). None: no pinning (GPU, one worker, or the
    user chose with rollout.cpu_threads or VLLM_CPU_OMP_THREADS_BIND)."""
    if count < 2 or config.rollout.cpu_threads or "VLLM_CPU_OMP_THREADS_BIND" in os.environ or has_cuda():
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:
        return [cores[index % len(cores)]]
    size, extra = divmod(len(cores), count)
    start = index * size + min(index, extra)
    return cores[start : start + size + (1 if index < extra else 0)]


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def stop(processes: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM each live process group, then SIGKILL whatever is left after `grace_s`."""
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in processes:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def make_run_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.run.output_dir) / f"{config.run.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir = Path(config.run.output_dir) / f"{config.run.name}-{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir.resolve()


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def local_learner_ranks(config: Config) -> int:
    """Learner ranks on this machine: all of them, or this host's slots in the hostfile."""
    if config.learner.hostfile is None:
        return config.learner.world_size
    from learner.distributed import parse_hostfile

    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}
    try:
        return sum(slots for host, slots in parse_hostfile(config.learner.hostfile).items() if host in names)
    except (OSError, ValueError):
        return 0  # check_run_inputs names the problem with the hostfile


def plan_run(config: Config) -> Plan:
    """The run's placement on this machine (RL_FAKE_GPUS: a made-up one); PlanError when none fits."""
    try:
        machine = detect_machine()
    except (ValueError, RuntimeError) as err:
        raise PlanError(str(err)) from None
    ranks = local_learner_ranks(config)
    if machine.gpus and config.learner.hostfile and ranks and os.environ.get(VISIBLE_ENV):
        raise PlanError(f"with learner.hostfile, DeepSpeed gives the ranks of every node GPUs 0..N-1 whatever CUDA_VISIBLE_DEVICES "
                        f"says; unset CUDA_VISIBLE_DEVICES (it is {os.environ[VISIBLE_ENV]!r})")
    count = config.rollout.num_workers
    cores = tuple(tuple(c) if c else None for c in (worker_cores(i, count, config) for i in range(count)))
    return make_plan(machine, config, ranks, cores)


def train(config: Config, resume_dir: Path | None = None, plan_only: bool = False, resume_step: int | None = None,
          verbose: bool = False) -> int:
    """Start a run (or continue `resume_dir` from its newest checkpoint, or that of `resume_step`) and supervise it;
    `plan_only`: print the plan; `verbose`: every library line on the console too."""
    # Installed explicitly: a launcher started in the background inherits SIGINT as ignored, and
    # SIGTERM (from a scheduler or `kill`) deserves the same orderly stop as Ctrl-C.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    plan = plan_run(config)  # an impossible placement fails here, before anything else
    plan_text = format_plan(plan, config)
    print(plan_text, flush=True)
    if plan_only:
        return 0
    # Bad rewards, distribution names, data files and hostfiles fail here, before any process starts,
    # and so does every data problem: the task source is built here once, as the learner will build it.
    check_run_inputs(config)
    source = build_task_source(config)
    from learner.distributed import learner_command  # torch: not needed until here

    def learner_argv(args: list[str]) -> list[str]:
        return learner_command(args, config.learner.world_size, config.learner.hostfile, config.learner.master_port,
                               sys.executable, master_addr=config.learner.master_addr, include=plan.learner_include())

    try:
        learner_argv(["--run-dir", "RUN", "--model-path", "MODEL"])
    except (OSError, ValueError) as err:
        raise SystemExit(f"[rl] learner: {err}") from None
    model_path = resolve_model(config.model)  # a missing model fails before any process starts
    check_prompts_fit(source, prompt_counter(model_path), config.prompt_token_limit())
    if resume_dir is None:
        run_dir = make_run_dir(config)
        print(f"[rl] run folder: {run_dir}", flush=True)
    else:
        from learner.checkpoint import resume_checkpoint, set_aside_after

        run_dir = resume_dir.resolve()
        # none there, or not intact (a file changed, missing or added, or a pickle beyond tensors): fails here
        checkpoint = resume_checkpoint(run_dir, resume_step)
        resume_step = int(checkpoint.name.removeprefix("step-"))
        print(f"[rl] resuming {run_dir} from {checkpoint.name} (checked against its manifest)", flush=True)
        for moved in set_aside_after(run_dir, resume_step):
            print(f"[rl] set aside the later checkpoint {moved.name} in {moved.parent} (this run writes that step again)", flush=True)
        (run_dir / "learner_address").unlink(missing_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(config))
    save_splits(source, run_dir / TASKS_FILE)  # the learner reads them instead of building them again
    (run_dir / "plan.txt").write_text(plan_text + "\n")
    if config.rollout.async_ and config.rollout.num_workers > 0 and not plan.on_gpu:
        print("[rl] note: rollout.async on a CPU-only machine: the local workers generate on the cores the learner "
              "trains on, which usually makes each step slower, not faster (measured in docs/benchmarks.md); "
              "asynchronous training pays off when generation and training run on different devices", flush=True)

    learner_args = ["--run-dir", str(run_dir), "--model-path", str(model_path)]
    if resume_dir is not None:
        learner_args += ["--resume", "--resume-step", str(resume_step)]  # exactly the checkpoint checked above
    # One rank: a plain process. Several (learner.world_size, or a hostfile): DeepSpeed's own launcher.
    learner = spawn(learner_argv(learner_args), env=child_environment(plan, plan.learner[0]) if plan.learner else None,
                    log=ProcessLog(run_dir / "logs" / "learner.log"), verbose=verbose)
    processes = [learner]
    try:
        address = wait_for_address(run_dir / "learner_address", learner)
        processes += start_local_workers(config, plan, address, run_dir, verbose)
        return supervise(learner, processes)
    except KeyboardInterrupt:
        CONSOLE.line("\n[rl] interrupted: the learner saves a checkpoint, then everything stops")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the checkpoint short
        stop([learner], grace_s=LEARNER_CHECKPOINT_GRACE_S)
        stop(processes)
        return 130
    finally:
        stop(processes)
        finish_output(processes)
        write_report(run_dir)


def start_local_workers(config: Config, plan: Plan, address: str, run_dir: Path, verbose: bool) -> list[subprocess.Popen]:
    workers = []
    for i, placement in enumerate(plan.workers):
        command = [sys.executable, "-m", "rollout.main", "--connect", address, "--name", f"local-{i}"]
        if config.transport.curve_keys:
            command += ["--keys", str(Path(config.transport.curve_keys).expanduser().resolve())]
        cores = list(placement.cores) if placement.cores else None
        workers.append(spawn(command, cores, env=child_environment(plan, placement, lock_dir=run_dir),
                             log=ProcessLog(run_dir / "logs" / f"worker-{i}.log"), verbose=verbose))
    return workers


def prompt_counter(model_path: Path):
    """Prompt token counts under the model's chat template (its tokenizer only, no weights)."""
    from transformers import AutoTokenizer

    from rl.prompts import prompt_lengths

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return lambda tasks: prompt_lengths(tokenizer, tasks)


def wait_for_address(path: Path, learner: subprocess.Popen, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if learner.poll() is not None:
            raise SystemExit(f"[rl] the learner exited with code {learner.returncode} during start-up{exit_summary(learner)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"[rl] the learner did not start listening within {timeout_s:.0f} s")
        time.sleep(0.2)
    return path.read_text().strip()


def supervise(learner: subprocess.Popen, processes: list[subprocess.Popen]) -> int:
    """Wait for the learner. A worker that dies is reported; the learner hands its prompts to the
    others (it notices through the missing heartbeats) and the run goes on."""
    reported: set[int] = set()
    while True:
        if learner.poll() is not None:
            if learner.returncode != 0:
                CONSOLE.line(f"[rl] the learner exited with code {learner.returncode}{exit_summary(learner)}; stopping the workers")
                return learner.returncode
            workers = [p for p in processes if p is not learner]
            deadline = time.monotonic() + 60
            while any(p.poll() is None for p in workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            return 0
        for index, proc in enumerate(processes[1:]):
            if proc.poll() is not None and proc.returncode != 0 and proc.pid not in reported:
                reported.add(proc.pid)
                CONSOLE.line(f"[rl] rollout worker local-{index} (pid {proc.pid}) exited with code {proc.returncode}"
                             f"{exit_summary(proc)}; the learner goes on with the others")
        time.sleep(0.5)


def write_report(run_dir: Path) -> None:
    """RUN/report.html at the end of every run that got going, finished or stopped (rl/report.py)."""
    if not (run_dir / "metrics.jsonl").is_file():
        return
    from rl.report import write_report as write_html

    try:
        path = write_html(run_dir)
    except Exception as err:  # the run's own result matters more than its report
        CONSOLE.line(f"[rl] could not write the report ({type(err).__name__}: {err}); try: rl report {run_dir}")
        return
    CONSOLE.line(f"[rl] report: {path} (open it in a browser; refresh any time with: rl report {run_dir})")
