"""The report's plots: matplotlib figures as inline SVG text (no file, no network, text kept as text)."""

from __future__ import annotations

import io
from html import escape
from dataclasses import dataclass
from typing import Any

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class Curve:
    """One plot of the report: its id in the page, its title, and the metrics.jsonl keys it draws."""

    id: str
    title: str
    keys: tuple[str, ...]
    ylabel: str = ""


# The curves every run's report shows (a key a run did not record is left out of its plot).
CURVES = (
    Curve("plot-reward", "reward", ("rollout/reward_mean",), "mean reward"),
    Curve("plot-accuracy", "accuracy", ("rollout/accuracy",), "share correct"),
    Curve("plot-lengths", "response lengths", ("rollout/response_len_mean", "rollout/response_len_max",
                                               "rollout/response_len_correct", "rollout/response_len_wrong"), "tokens"),
    Curve("plot-kl", "KL", ("train/kl", "train/approx_kl"), "nats"),
    Curve("plot-entropy", "entropy", ("train/entropy",), "nats per token"),
    Curve("plot-time", "time per step", ("time/step_seconds",), "seconds"),
)
# Shown when a run recorded them (the diagnostics of newer runs).
EXTRA_CURVES = (
    Curve("plot-zero-spread", "zero reward spread: groups, and samples the learner left out",
          ("groups/zero_spread_frac", "train/skipped_frac"), "share"),
    Curve("plot-advantage", "advantage", ("advantage/min", "advantage/mean", "advantage/max")),
)


def series(records: Records, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the records that have a number for it."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), int)]
    return [p[0] for p in points], [float(p[1]) for p in points]


def present_keys(records: Records, keys: tuple[str, ...] | list[str]) -> list[str]:
    return [key for key in keys if series(records, key)[0]]


def svg_figure(lines: dict[str, tuple[list, list]], title: str, ylabel: str = "", xlabel: str = "step") -> str:
    """One line plot as an <svg> element; `lines`: label -> (x, y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "rl-report", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(5.2, 3.0))
        for label, (x, y) in lines.items():
            ax.plot(x, y, marker="o" if len(x) < 40 else None, markersize=3, linewidth=1.4, label=label)
        ax.set_xlabel(xlabel)  # the title is the figure's caption in the page
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
        plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
    return text.replace("<svg", f'<svg role="img" aria-label="{escape(title)}"', 1)


def curve_svg(records: Records, curve: Curve) -> str | None:
    """The curve's plot, or None when the run recorded none of its keys."""
    keys = present_keys(records, curve.keys)
    if not keys:
        return None
    return svg_figure({key.split("/")[-1]: series(records, key) for key in keys}, curve.title, curve.ylabel)


def distribution_names(records: Records, prefix: str, suffix: str) -> list[str]:
    """The <name> of every `prefix/<name>/suffix` key, in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        for key in record:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == prefix and parts[2] == suffix:
                names.setdefault(parts[1], None)
    return list(names)


def family_svg(records: Records, prefix: str, suffix: str, title: str, ylabel: str) -> str | None:
    """One line per distribution of `prefix/<dist>/suffix` (held-out accuracy, curriculum probability)."""
    names = distribution_names(records, prefix, suffix)
    if not names:
        return None
    return svg_figure({name: series(records, f"{prefix}/{name}/{suffix}") for name in names}, title, ylabel)


def phase_times_svg(records: Records) -> str | None:
    """Seconds per phase of a step (every time/<phase>_seconds key but the whole step's)."""
    keys = sorted({k for r in records for k in r if k.startswith("time/") and k.endswith("_seconds") and k != "time/step_seconds"})
    keys = present_keys(records, keys)
    if not keys:
        return None
    return svg_figure({key.removeprefix("time/").removesuffix("_seconds"): series(records, key) for key in keys},
                      "time per phase", "seconds")


def memory_svg(records: Records) -> str | None:
    keys = present_keys(records, sorted({k for r in records for k in r if k.startswith("memory/")}))
    if not keys:
        return None
    return svg_figure({key.removeprefix("memory/"): series(records, key) for key in keys}, "peak memory", "GiB")
