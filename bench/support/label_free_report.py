"""The label-free benchmark's report, from the run folders alone (no model, no torch).

Slots, budgets and finished / resumable runs are bench/support/curriculum_report.py's. Of a run it
reads:
- held-out curves, greedy, per distribution and overall: `eval_before.json` (step 0), the
  `eval/<name>/<key>` values of its `metrics.jsonl` (every eval.every steps), `eval_after.json` (the
  last step), for key `accuracy` and `response_len_mean`;
- the training curve: `rollout/response_len_mean` and `rollout/reward_mean` of every step (the
  sampled completions the policy trained on; their reward is each arm's own, so not comparable).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from bench.support.curriculum_report import Spread, metric_lines, read_seconds

OVERALL = "overall"


@dataclass
class LabelFreeRun:
    arm: str
    seed: int
    folder: Path
    accuracy: dict[int, dict[str, float]]  # step -> distribution (and overall) -> held-out accuracy
    held_out_length: dict[int, float]  # step -> overall mean held-out response length (tokens)
    train_length: dict[int, float]  # step -> mean length of the step's training samples
    train_reward: dict[int, float]
    seconds: float | None


def held_out_curve(run: Path, names: list[str], key: str, steps: int) -> dict[int, dict[str, float]]:
    """step -> name -> the evaluation's `key`, from eval_before (0), metrics.jsonl and eval_after (`steps`)."""
    curve: dict[int, dict[str, float]] = {}
    for step, file in ((0, "eval_before.json"), (steps, "eval_after.json")):
        if (run / file).is_file():
            rows = json.loads((run / file).read_text())["distributions"]
            curve[step] = {n: rows[n][key] for n in names if n in rows and rows[n][key] is not None}
    for line in metric_lines(run):
        during = {n: line[f"eval/{n}/{key}"] for n in names if f"eval/{n}/{key}" in line}
        if during and line["step"] not in (0, steps):
            curve[line["step"]] = during
    incomplete = {step: sorted(set(names) - set(row)) for step, row in curve.items() if set(row) != set(names)}
    if incomplete:
        raise ValueError(f"{run}: evaluations without {key} for some distributions: {incomplete}")
    return dict(sorted(curve.items()))


def training_curve(run: Path, key: str) -> dict[int, float]:
    return {line["step"]: line[key] for line in metric_lines(run) if line.get(key) is not None}


def read_run(arm: str, seed: int, run: Path, distributions: list[str], steps: int) -> LabelFreeRun:
    names = [*distributions, OVERALL]
    lengths = held_out_curve(run, [OVERALL], "response_len_mean", steps)
    return LabelFreeRun(
        arm, seed, run, held_out_curve(run, names, "accuracy", steps), {s: row[OVERALL] for s, row in lengths.items()},
        training_curve(run, "rollout/response_len_mean"), training_curve(run, "rollout/reward_mean"), read_seconds(run.parent),
    )


def spread_at(runs: list[LabelFreeRun], value) -> Spread | None:
    """The spread over runs of value(run), leaving out runs where it is None; None if all are."""
    values = [v for v in (value(r) for r in runs) if v is not None]
    return Spread.of(values) if values else None


def cell(spread: Spread | None, scale: float = 100.0, digits: int = 1) -> str:
    return "-" if spread is None else spread.text(scale, digits)


def eval_steps(by_arm: dict[str, list[LabelFreeRun]]) -> list[int]:
    return sorted({step for runs in by_arm.values() for r in runs for step in r.accuracy})


def accuracy_table(by_arm: dict[str, list[LabelFreeRun]], distributions: list[str], steps: int) -> list[str]:
    arms = list(by_arm)
    out = ["Held-out accuracy (%, greedy; overall = all held-out tasks), mean ± sd over seeds (min–max)", "",
           "| step | " + " | ".join(arms) + " |", "| --- |" + " --- |" * len(arms)]
    for step in eval_steps(by_arm):
        out.append(f"| {step} | " + " | ".join(
            cell(spread_at(runs, lambda r, s=step: r.accuracy.get(s, {}).get(OVERALL))) for runs in by_arm.values()) + " |")
    for name in distributions:
        out.append(f"| {name}, step {steps} | " + " | ".join(
            cell(spread_at(runs, lambda r, n=name: r.accuracy.get(steps, {}).get(n))) for runs in by_arm.values()) + " |")
    return out


def length_table(by_arm: dict[str, list[LabelFreeRun]], steps: int) -> list[str]:
    arms = list(by_arm)
    out = ["Mean response length (tokens): training samples of the step (temperature 1) / held-out (greedy), "
           "mean over seeds", "", "| step | " + " | ".join(arms) + " |", "| --- |" + " --- |" * len(arms)]

    def mean_of(runs, value) -> str:
        spread = spread_at(runs, value)
        return "-" if spread is None else f"{spread.mean:.1f}"

    for step in eval_steps(by_arm):
        train_step = max(step, 1)  # step 0 has no training samples: show the first step's
        cells = [f"{mean_of(runs, lambda r: r.train_length.get(train_step))} / {mean_of(runs, lambda r: r.held_out_length.get(step))}"
                 for runs in by_arm.values()]
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    return out


def markdown_tables(by_arm: dict[str, list[LabelFreeRun]], distributions: list[str], steps: int) -> str:
    if not any(by_arm.values()):
        return "(no finished runs yet)\n"
    by_arm = {arm: runs for arm, runs in by_arm.items() if runs}
    out = accuracy_table(by_arm, distributions, steps) + [""] + length_table(by_arm, steps)
    out += ["", "| arm | seeds | minutes per run |", "| --- | --- | --- |"]
    for arm, runs in by_arm.items():
        seconds = spread_at(runs, lambda r: r.seconds)
        minutes = "-" if seconds is None else f"{seconds.mean / 60:.1f} ({seconds.low / 60:.1f}–{seconds.high / 60:.1f})"
        out.append(f"| {arm} | {', '.join(str(r.seed) for r in runs)} | {minutes} |")
    return "\n".join(out) + "\n"


def headline(by_arm: dict[str, list[LabelFreeRun]], steps: int, value_arm: str = "format_length",
             reference_arm: str = "correctness") -> dict:
    """The last JSON line: the value arm's final held-out accuracy (mean over seeds) against the reference arm's."""
    def final(arm: str) -> float | None:
        spread = spread_at(by_arm.get(arm, []), lambda r: r.accuracy.get(steps, {}).get(OVERALL))
        return None if spread is None else spread.mean

    value, reference = final(value_arm), final(reference_arm)
    ratio = value / reference if value is not None and reference else None
    return {"metric": f"label_free_final_accuracy_{value_arm}_vs_{reference_arm}",
            "value": None if value is None else round(value, 4), "reference": None if reference is None else round(reference, 4),
            "ratio": None if ratio is None or not math.isfinite(ratio) else round(ratio, 3), "unit": "held-out accuracy"}
