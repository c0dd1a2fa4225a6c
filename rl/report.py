"""`rl report RUN_DIR`: one self-contained HTML file about a run (finished, stopped or still running).

It reads only the run folder's text files (config.yaml, metrics.jsonl, completions.jsonl,
eval_before.json, eval_after.json), tolerates a line cut short by a run still writing, and inlines
everything: CSS, and the plots as SVG (rl/report_plots.py). Completions are model output: every
piece of text from the run folder is HTML-escaped, nothing is executed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from rl.report_completions import completions_section
from rl.report_plots import CURVES, EXTRA_CURVES, Records, curve_svg, family_svg, memory_svg, phase_times_svg

NOT_RECORDED = "not recorded in this run"


class ReportError(ValueError):
    """The folder is not a run folder."""


def read_jsonl(path: Path) -> Records:
    """The JSON objects of a .jsonl file; a torn or foreign line (a run still writing) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def eval_records(run_dir: Path, metrics: Records) -> Records:
    """Held-out results over steps: before training (step 0), every eval.every step, after training (the last step)."""
    def as_record(step: int, result: dict) -> dict:
        rows = result.get("distributions") or {}
        return {"step": step, **{f"eval/{name}/accuracy": row.get("accuracy") for name, row in rows.items() if isinstance(row, dict)}}

    records = []
    if before := read_json(run_dir / "eval_before.json"):
        records.append(as_record(0, before))
    records += [r for r in metrics if any(k.startswith("eval/") and k.endswith("/accuracy") for k in r)]
    if after := read_json(run_dir / "eval_after.json"):
        last = max((r["step"] for r in metrics if isinstance(r.get("step"), int)), default=0)
        records.append(as_record(last, after))
    return records


def run_status(run_dir: Path, metrics: Records, config_text: str) -> str:
    steps = [r["step"] for r in metrics if isinstance(r.get("step"), int)]
    total = None
    try:
        import yaml

        total = (yaml.safe_load(config_text) or {}).get("train", {}).get("steps")
    except Exception:  # a report of a broken config still shows the rest
        pass
    done = f"{max(steps) if steps else 0} of {total if total is not None else '?'} steps"
    if (run_dir / "final").is_dir():
        return f"finished: {done}"
    return f"stopped or still running: {done} so far"


def figure(fig_id: str, title: str, svg: str | None) -> str:
    body = svg if svg is not None else f'<p class="missing">{NOT_RECORDED}</p>'
    return f'<figure id="{fig_id}"><figcaption>{escape(title)}</figcaption>{body}</figure>'


def curves_section(metrics: Records, evals: Records) -> str:
    figures = [figure(c.id, c.title, curve_svg(metrics, c)) for c in CURVES]
    figures.append(figure("plot-heldout", "held-out accuracy per distribution",
                          family_svg(evals, "eval", "accuracy", "held-out accuracy (mean@k)", "share correct")))
    figures.append(figure("plot-curriculum", "curriculum probabilities",
                          family_svg(metrics, "curriculum", "probability", "sampling probability", "probability")))
    extras = [(c.id, c.title, curve_svg(metrics, c)) for c in EXTRA_CURVES]
    extras += [("plot-phases", "time per phase", phase_times_svg(metrics)), ("plot-memory", "peak memory", memory_svg(metrics))]
    figures += [figure(*extra) for extra in extras if extra[2] is not None]
    return '<section id="curves"><h2>Curves</h2><div class="grid">' + "".join(figures) + "</div></section>"


def config_section(config_text: str) -> str:
    body = f"<pre>{escape(config_text)}</pre>" if config_text else f'<p class="missing">{NOT_RECORDED}</p>'
    return f'<section id="config"><h2>Config</h2><details><summary>config.yaml</summary>{body}</details></section>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; }
.status { color: #555; } .missing { color: #999; font-style: italic; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #eee; padding: 4px; width: 540px; }
figcaption { font-weight: 600; font-size: 0.9em; } figure svg { width: 100%; height: auto; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; white-space: pre-wrap; font-size: 0.85em; }
details { margin: 4px 0; } summary { cursor: pointer; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }
td.text { white-space: pre-wrap; font-family: monospace; max-width: 640px; }
"""


def render_report(run_dir: Path) -> str:
    """The report of `run_dir` as one HTML document."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file() and not (run_dir / "metrics.jsonl").is_file():
        raise ReportError(f"{run_dir} is not a run folder (it has neither config.yaml nor metrics.jsonl)")
    config_text = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else ""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    completions = read_jsonl(run_dir / "completions.jsonl")
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>rl report: {escape(run_dir.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(run_dir.name)}</h1>",
        f'<p class="status">{escape(run_status(run_dir, metrics, config_text))}; report made {made} from {escape(str(run_dir))}</p>',
        config_section(config_text),
        curves_section(metrics, eval_records(run_dir, metrics)),
        completions_section(completions, NOT_RECORDED),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the report (default RUN/report.html) through a temporary file, so a reader never sees half of one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder")
    output = Path(output) if output else run_dir / "report.html"
    text = render_report(run_dir)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(output)
    return output

