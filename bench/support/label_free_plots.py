"""The label-free benchmark's PNG, drawn from the runs' own files (via label_free_report's readers).

Two panels against training steps, per arm the mean over seeds as a line and the range over seeds
as a band: held-out accuracy (overall, greedy), and mean response length (training samples every
step, solid; held-out greedy answers at the evaluations, dashed with markers).
"""

from __future__ import annotations

from pathlib import Path

from bench.support.curriculum_plots import _band, _pyplot
from bench.support.label_free_report import OVERALL, LabelFreeRun


def plot_label_free(by_arm: dict[str, list[LabelFreeRun]], path: Path) -> Path | None:
    by_arm = {arm: runs for arm, runs in by_arm.items() if runs}
    if not by_arm:
        return None
    plt = _pyplot()
    fig, (accuracy_ax, length_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for index, (arm, runs) in enumerate(by_arm.items()):
        color = f"C{index}"
        steps, mean, low, high = _band([[(s, row[OVERALL]) for s, row in r.accuracy.items()] for r in runs])
        accuracy_ax.plot(steps, [100 * v for v in mean], color=color, marker="o", label=arm)
        accuracy_ax.fill_between(steps, [100 * v for v in low], [100 * v for v in high], color=color, alpha=0.15)
        steps, mean, low, high = _band([sorted(r.train_length.items()) for r in runs])
        length_ax.plot(steps, mean, color=color, label=f"{arm} (training)")
        length_ax.fill_between(steps, low, high, color=color, alpha=0.15)
        steps, mean, _, _ = _band([sorted(r.held_out_length.items()) for r in runs])
        length_ax.plot(steps, mean, color=color, linestyle="--", marker="o", label=f"{arm} (held-out)")
    accuracy_ax.set(title="held-out accuracy (greedy)", xlabel="step", ylabel="%")
    length_ax.set(title="mean response length", xlabel="step", ylabel="tokens")
    accuracy_ax.legend(fontsize=8)
    length_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
