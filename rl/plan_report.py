"""The placement plan as text: what `rl train --plan` prints and every run's log starts with."""

from __future__ import annotations

from rl.config import Config
from rl.devices import effective_zero_stage
from rl.placement import MEMORY_ENV, Placement, Plan, child_environment


def format_plan(plan: Plan, config: Config) -> str:
    lines = [f"[rl] plan ({machine_summary(plan)})"]
    lines += [f"  devices: {line}" for line in device_lines(plan)]
    lines.append(f"  learner: {learner_summary(plan, config)}")
    lines.append(f"  rollout: {rollout_summary(plan, config)}")
    rows = [("process", "device", "memory", "cores", "threads", "environment")]
    rows += [process_row(plan, p, config) for p in plan.learner + plan.workers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def core_list(cores) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6'."""
    cores, parts, start = sorted(cores), [], None
    for i, core in enumerate(cores):
        if start is None:
            start = core
        if i + 1 == len(cores) or cores[i + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts)


def machine_summary(plan: Plan) -> str:
    cores = plan.machine.cores
    cpu = f"{len(cores)} core{'s' * (len(cores) != 1)} ({core_list(cores)})"
    if not plan.on_gpu:
        return f"no GPU: CPU only, {cpu}"
    n = len(plan.machine.gpus)
    return f"{n} GPU{'s' * (n != 1)} from {plan.machine.source}, {cpu}"


def device_lines(plan: Plan) -> list[str]:
    if not plan.on_gpu:
        return ["CPU"]
    groups: list[list] = []  # runs of identical GPUs
    for gpu in plan.machine.gpus:
        key = (gpu.name, round(gpu.memory_gib, 1), tuple(gpu.capability))
        if groups and groups[-1][0] == key:
            groups[-1][1].append(gpu.index)
        else:
            groups.append([key, [gpu.index]])
    lines = []
    for (name, gib, capability), indices in groups:
        which = f"GPU {indices[0]}" if len(indices) == 1 else f"GPU {core_list(indices)}"
        bf16 = "bf16" if tuple(capability) >= (8, 0) else "no bf16"
        lines.append(f"{which}: {name}, {gib:.1f} GiB, compute capability {capability[0]}.{capability[1]} ({bf16})")
    return lines


def learner_summary(plan: Plan, config: Config) -> str:
    backend = "nccl" if plan.on_gpu else "gloo"
    here = len(plan.learner)
    ranks = f"{plan.world_size} rank{'s' * (plan.world_size != 1)}"
    if plan.hostfile:
        ranks += f" over the hostfile's nodes, {here} on this machine"
    start = "as one process" if plan.world_size == 1 and not plan.hostfile else "by DeepSpeed's launcher"
    if plan.learner_include():
        start += f" --include {plan.learner_include()}"
    return f"{ranks}, DeepSpeed ZeRO-{effective_zero_stage(config.train.zero_stage, plan.world_size, plan.train_dtype)} over {backend}, train.dtype {plan.train_dtype}; started {start}"


def rollout_summary(plan: Plan, config: Config) -> str:
    n = len(plan.workers)
    if not n:
        return (f"no local workers; weights published in {plan.rollout_dtype} (workers that join set rollout.dtype="
                f"{config.rollout.dtype} and their memory for their own GPU)")
    count = f"{n} local worker{'s' * (n != 1)}"
    graphs = "eager" if plan.enforce_eager else ("compiled, CUDA graphs" if plan.on_gpu else "compiled")
    engine = f"vLLM on {'CUDA' if plan.on_gpu else 'CPU'} ({graphs})"
    text = f"{count}, {engine}, rollout.dtype {plan.rollout_dtype}, weights published in {plan.rollout_dtype}"
    if not plan.on_gpu and n:
        text += f", KV cache {config.rollout.kv_cache_gib:g} GiB per engine"
    return text


def process_row(plan: Plan, process: Placement, config: Config) -> tuple[str, ...]:
    machine = plan.machine
    all_cores = f"all ({core_list(machine.cores)})"
    is_learner = process in plan.learner
    if process.gpu is None:
        device, memory = "CPU", "-" if is_learner else f"KV cache {config.rollout.kv_cache_gib:g} GiB"
        if process.cores:
            cores = f"{core_list(process.cores)} (pinned)"
        elif not is_learner and config.rollout.cpu_threads:
            cores = f"{config.rollout.cpu_threads} (rollout.cpu_threads)"
        else:
            cores = all_cores
        threads = str(process.threads)
    else:
        gpu = machine.gpus[process.gpu]
        device, cores = f"GPU {gpu.index}", all_cores
        if is_learner:
            engines = sum(w.memory_fraction for w in plan.engines_on(process.gpu))
            left = 1 - engines
            memory = "whole GPU" if not engines else f"what the engines leave ({left:.2f} = {left * gpu.memory_gib:.1f} GiB)"
            threads = str(process.threads)
        else:
            memory = f"{process.memory_fraction:.3f} = {process.memory_fraction * gpu.memory_gib:.1f} GiB"
            threads = "-"
    return (process.name, device, memory, cores, threads, environment_text(plan, process))


def environment_text(plan: Plan, process: Placement) -> str:
    env = child_environment(plan, process)
    if not env:
        return "-"
    if env.get("CUDA_VISIBLE_DEVICES", "") is None:
        return "CUDA_VISIBLE_DEVICES set by DeepSpeed per rank"
    order = ["CUDA_VISIBLE_DEVICES", MEMORY_ENV]
    return " ".join(f"{k}={env[k]}" for k in order if k in env)
