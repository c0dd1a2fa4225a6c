"""The curriculum benchmark's PNGs, drawn from the runs' own files (via curriculum_report's readers).

- accuracy against steps: one panel per distribution and one for their mean; per arm the mean over
  seeds as a line and the range over seeds as a band;
- the UCB arms' sampling probabilities: one panel per UCB arm, a line per distribution (mean over
  seeds) with its range as a band.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.support.curriculum_report import ArmSummary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps present in every series, with the mean, min and max over series there."""
    steps = sorted(set.intersection(*(set(s for s, _ in one) for one in series)))
    values = [[dict(one)[s] for one in series] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_accuracy(summaries: list[ArmSummary], distributions: list[str], path: Path) -> Path:
    plt = _pyplot()
    panels = [*distributions, "mean"]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for summary in summaries:
            if panel == "mean":
                series = [[(s, statistics.fmean(row.values())) for s, row in r.curve.items()] for r in summary.runs]
            else:
                series = [[(s, row[panel]) for s, row in r.curve.items()] for r in summary.runs]
            steps, mean, low, high = _band(series)
            (line,) = ax.plot(steps, [100 * v for v in mean], marker="o", label=f"{summary.arm} (n={len(summary.runs)})")
            ax.fill_between(steps, [100 * v for v in low], [100 * v for v in high], color=line.get_color(), alpha=0.2)
        ax.set_title(panel if panel != "mean" else "mean over distributions")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("held-out greedy accuracy: mean over seeds, band = min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probabilities(summaries: list[ArmSummary], distributions: list[str], path: Path) -> Path | None:
    """Only arms whose probabilities move (UCB); None if there is none."""
    moving = [s for s in summaries if any(len({round(p[d], 9) for _, p in r.probabilities}) > 1
                                          for r in s.runs for d in distributions)]
    if not moving:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(moving), figsize=(5.5 * len(moving), 3.6), squeeze=False)
    for ax, summary in zip(axes.flat, moving):
        for d in distributions:
            steps, mean, low, high = _band([[(s, p[d]) for s, p in r.probabilities] for r in summary.runs])
            (line,) = ax.plot(steps, mean, label=d)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{summary.arm}: sampling probability (n={len(summary.runs)})")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
