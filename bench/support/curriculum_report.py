"""The curriculum benchmark's bookkeeping and report, from the run folders alone (no model, no torch).

Layout: RUNS_DIR/<arm>-seed<k>/ is one (arm, seed) slot; `rl train` makes its run folder inside
(run.output_dir), the bench adds `train.log` and `bench_time.json` (wall seconds, summed over
sittings). A run is finished when its folder has the trained model (`final/config.json`), the final
evaluation (`eval_after.json`) and a config with this grid's budget; it is resumable when it has a
complete checkpoint but is not finished.

The accuracy curve of a run: `eval_before.json` (step 0), the `eval/<dist>/accuracy` values in its
`metrics.jsonl` (every eval.every steps) and `eval_after.json` (the last step). The area under the
mean-accuracy curve (the mean over distributions, trapezoids over steps) measures convergence speed,
in accuracy x steps; divided by the steps it is the accuracy averaged over the run.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FINAL_MODEL = Path("final") / "config.json"
TIME_FILE = "bench_time.json"


@dataclass(frozen=True)
class Budget:
    """What every run of the grid must share; a run folder with another budget is not this grid's."""

    steps: int
    eval_every: int
    test_size: int
    mixture: tuple[str, ...]

    def matches(self, config: dict) -> bool:
        env = config.get("env", {})
        sources = env.get("sources") or [{}]
        return (config.get("train", {}).get("steps") == self.steps and config.get("eval", {}).get("every") == self.eval_every
                and env.get("test_size") == self.test_size and tuple(sources[0].get("distributions", ())) == self.mixture)


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and range of one number over seeds."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("a spread of no values")
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), sd, min(values), max(values), len(values))

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        f = f"{{:.{digits}f}}"
        return f"{f.format(scale * self.mean)} ± {f.format(scale * self.sd)} ({f.format(scale * self.low)}–{f.format(scale * self.high)})"


@dataclass
class RunResult:
    """What the report needs of one finished run."""

    arm: str
    seed: int
    folder: Path
    curve: dict[int, dict[str, float]]  # step -> distribution -> held-out accuracy
    samples: dict[str, int]  # distribution -> samples the curriculum counted (everything generated)
    probabilities: list[tuple[int, dict[str, float]]]  # (step, the weights its prompts were drawn with)
    seconds: float | None  # wall time of the bench's `rl train` calls for it


@dataclass
class ArmSummary:
    arm: str
    seeds: list[int]
    final: dict[str, Spread]  # per distribution, and "mean"
    auc: Spread
    samples: dict[str, float]  # mean over seeds
    seconds: Spread | None
    steps: int
    runs: list[RunResult] = field(default_factory=list)


# ---------------------------------------------------------------- finding runs


def slot_dir(runs_dir: Path, arm: str, seed: int) -> Path:
    return runs_dir / f"{arm}-seed{seed}"


def read_config(run: Path) -> dict:
    try:
        return yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def run_folders(slot: Path) -> list[Path]:
    """The run folders `rl train` made in a slot, oldest first (their names end in a timestamp)."""
    if not slot.is_dir():
        return []
    return sorted(p for p in slot.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def is_finished(run: Path, budget: Budget) -> bool:
    return (run / FINAL_MODEL).is_file() and (run / "eval_after.json").is_file() and budget.matches(read_config(run))


def has_checkpoint(run: Path) -> bool:
    """A complete checkpoint (learner/checkpoint.py renames a folder only once trainer_state.json is in)."""
    root = run / "checkpoints"
    return root.is_dir() and any((p / "trainer_state.json").is_file() for p in root.glob("step-*"))


def finished_run(slot: Path, budget: Budget) -> Path | None:
    """The newest finished run of the slot with this budget: such a slot is not run again."""
    done = [run for run in run_folders(slot) if is_finished(run, budget)]
    return done[-1] if done else None


def resumable_run(slot: Path, budget: Budget) -> Path | None:
    """The newest unfinished run of this budget with a checkpoint: `rl train --resume` continues it."""
    candidates = [run for run in run_folders(slot)
                  if not is_finished(run, budget) and budget.matches(read_config(run)) and has_checkpoint(run)]
    return candidates[-1] if candidates else None


def add_seconds(slot: Path, seconds: float) -> float:
    path = slot / TIME_FILE
    total = read_seconds(slot) or 0.0
    total += seconds
    path.write_text(json.dumps({"seconds": round(total, 1)}))
    return total


def read_seconds(slot: Path) -> float | None:
    try:
        return float(json.loads((slot / TIME_FILE).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- reading one run


def metric_lines(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy_curve(run: Path, distributions: list[str], steps: int) -> dict[int, dict[str, float]]:
    """step -> distribution -> accuracy: step 0 (eval_before), the evaluations during training, the last step."""
    curve: dict[int, dict[str, float]] = {}
    for step, name in ((0, "eval_before.json"), (steps, "eval_after.json")):
        path = run / name
        if path.is_file():
            rows = json.loads(path.read_text())["distributions"]
            curve[step] = {d: rows[d]["accuracy"] for d in distributions if d in rows}
    for line in metric_lines(run):
        during = {d: line[f"eval/{d}/accuracy"] for d in distributions if f"eval/{d}/accuracy" in line}
        if during and line["step"] not in (0, steps):
            curve[line["step"]] = during
    incomplete = {step: sorted(set(distributions) - set(row)) for step, row in curve.items() if set(row) != set(distributions)}
    if incomplete:
        raise ValueError(f"{run}: evaluations without some distributions: {incomplete}")
    return dict(sorted(curve.items()))


def mean_curve(curve: dict[int, dict[str, float]]) -> list[tuple[int, float]]:
    """(step, the accuracy averaged over distributions)."""
    return [(step, statistics.fmean(row.values())) for step, row in sorted(curve.items())]


def area_under(points: list[tuple[int, float]]) -> float:
    """Trapezoidal area under (step, value) points, in value x steps."""
    if len(points) < 2:
        raise ValueError(f"an area needs at least two points, got {points}")
    return sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:]))


def samples_spent(run: Path, distributions: list[str]) -> dict[str, int]:
    """The curriculum's sample counts after the last step (cumulative, restored across resumes)."""
    lines = [line for line in metric_lines(run) if f"curriculum/{distributions[0]}/count" in line]
    if not lines:
        return dict.fromkeys(distributions, 0)
    last = max(lines, key=lambda line: line["step"])
    return {d: int(last.get(f"curriculum/{d}/count", 0)) for d in distributions}


def sampling_probabilities(run: Path, distributions: list[str]) -> list[tuple[int, dict[str, float]]]:
    return [(line["step"], {d: line[f"curriculum/{d}/probability"] for d in distributions})
            for line in metric_lines(run) if all(f"curriculum/{d}/probability" in line for d in distributions)]


def read_run(arm: str, seed: int, run: Path, distributions: list[str], steps: int) -> RunResult:
    return RunResult(arm, seed, run, accuracy_curve(run, distributions, steps), samples_spent(run, distributions),
                     sampling_probabilities(run, distributions), read_seconds(run.parent))


# ---------------------------------------------------------------- the summary and its tables


def summarize_arm(arm: str, runs: list[RunResult], distributions: list[str], steps: int) -> ArmSummary:
    finals = {d: Spread.of([r.curve[steps][d] for r in runs]) for d in distributions}
    finals["mean"] = Spread.of([statistics.fmean(r.curve[steps][d] for d in distributions) for r in runs])
    seconds = [r.seconds for r in runs if r.seconds is not None]
    return ArmSummary(
        arm=arm, seeds=[r.seed for r in runs], final=finals,
        auc=Spread.of([area_under(mean_curve(r.curve)) for r in runs]),
        samples={d: statistics.fmean(r.samples[d] for r in runs) for d in distributions},
        seconds=Spread.of(seconds) if seconds else None, steps=steps, runs=runs,
    )


def markdown_tables(summaries: list[ArmSummary], distributions: list[str]) -> str:
    if not summaries:
        return "(no finished runs yet)\n"
    steps = summaries[0].steps
    arms = [s.arm for s in summaries]
    out = [f"Final held-out accuracy at step {steps} (%), mean ± sd over seeds (min–max)", "",
           "| distribution | " + " | ".join(arms) + " |", "| --- |" + " --- |" * len(arms)]
    for d in [*distributions, "mean"]:
        out.append(f"| {d} | " + " | ".join(s.final[d].text() for s in summaries) + " |")
    out += ["", "Area under the mean-accuracy curve (accuracy x steps; / steps = accuracy averaged over the run)", "",
            "| arm | seeds | AUC | AUC / steps (%) | minutes per run |", "| --- | --- | --- | --- | --- |"]
    for s in summaries:
        per_step = Spread(s.auc.mean / steps, s.auc.sd / steps, s.auc.low / steps, s.auc.high / steps, s.auc.n)
        minutes = "-" if s.seconds is None else f"{s.seconds.mean / 60:.1f} ({s.seconds.low / 60:.1f}–{s.seconds.high / 60:.1f})"
        out.append(f"| {s.arm} | {', '.join(map(str, s.seeds))} | {s.auc.text(1.0, 2)} | {per_step.text()} | {minutes} |")
    out += ["", "Samples spent per distribution (generated, mean over seeds)", "",
            "| arm | " + " | ".join(distributions) + " |", "| --- |" + " --- |" * len(distributions)]
    for s in summaries:
        total = sum(s.samples.values()) or 1
        out.append(f"| {s.arm} | " + " | ".join(f"{s.samples[d]:.0f} ({100 * s.samples[d] / total:.0f}%)" for d in distributions) + " |")
    return "\n".join(out) + "\n"


def headline(summaries: dict[str, ArmSummary], value_arm: str = "ucb", reference_arm: str = "uniform") -> dict:
    """The last JSON line: UCB's mean AUC against uniform's (None where an arm has no finished run)."""
    value = summaries[value_arm].auc.mean if value_arm in summaries else None
    reference = summaries[reference_arm].auc.mean if reference_arm in summaries else None
    ratio = value / reference if value is not None and reference else None
    return {"metric": "curriculum_auc_ucb_vs_uniform", "value": None if value is None else round(value, 4),
            "reference": None if reference is None else round(reference, 4),
            "ratio": None if ratio is None or not math.isfinite(ratio) else round(ratio, 3), "unit": "accuracy x steps"}
