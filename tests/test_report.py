"""`rl report` on made-up run folders: every section, escaping, partial and missing data."""

import re
import subprocess
import sys

from rl.report import NOT_RECORDED, render_report
from rl.report_completions import spread_steps
from rl.report_plots import CURVES
from tests.report_fixture import HOSTILE, write_run

REQUIRED = [c.id for c in CURVES] + ["plot-heldout", "plot-curriculum"]


def figure_of(html: str, fig_id: str) -> str:
    match = re.search(rf'<figure id="{fig_id}">(.*?)</figure>', html, re.S)
    assert match, f"no figure {fig_id}"
    return match.group(1)


def test_a_finished_run_has_every_curve_and_its_best_and_worst_groups(tmp_path):
    html = render_report(write_run(tmp_path / "run"))
    for fig_id in REQUIRED + ["plot-zero-spread", "plot-advantage", "plot-phases", "plot-memory"]:
        assert "<svg" in figure_of(html, fig_id), fig_id
    assert NOT_RECORDED not in html
    assert "finished: 6 of 6 steps" in html
    # 4 of 6 steps, each its best group (2) and worst group (0), every sample of the group in order
    summaries = re.findall(r"<summary>(step \d+ · \w+ group \(group \d\))", html)
    assert summaries == [f"step {s} · {label}" for s in (1, 3, 4, 6) for label in ("best group (group 2)", "worst group (group 0)")]
    assert html.count('<tr class="sample">') == 8 * 2
    assert "step 6 group 2 sample 0" in html and "step 6 group 2 sample 1" in html
    assert "step 6 group 1 sample" not in html  # the middle group is not shown


def test_model_output_and_config_are_escaped_never_markup(tmp_path):
    html = render_report(write_run(tmp_path / "run"))
    assert "<script>" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;/pre&gt;&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html and "&#x27;&lt;fixture&gt;&#x27;" in html
    assert HOSTILE not in html


def test_a_running_run_with_a_torn_last_line_and_no_diagnostics(tmp_path):
    run = write_run(tmp_path / "run", steps=3, finished=False, completions=False)
    html = render_report(run)
    assert "stopped or still running: 3 of 7 steps so far" in html
    assert '<section id="completions"><h2>Completions</h2><p class="missing">not recorded in this run</p>' in html
    for fig_id in REQUIRED:
        figure_of(html, fig_id)


def test_an_old_run_shows_what_it_recorded_and_says_what_it_did_not(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "rollout/reward_mean": 0.5, "train/kl": 0.0}\n')
    html = render_report(run)
    assert "<svg" in figure_of(html, "plot-reward") and "<svg" in figure_of(html, "plot-kl")
    for fig_id in ("plot-entropy", "plot-heldout", "plot-curriculum"):
        assert NOT_RECORDED in figure_of(html, fig_id)
    assert "plot-memory" not in html  # the extra diagnostics appear only when recorded


def test_the_command_writes_the_file_and_refuses_a_folder_that_is_no_run(tmp_path):
    run = write_run(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "rl.cli", "report", str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[rl] report: {run / 'report.html'}"
    text = (run / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)|<link|<script|@import", text)  # nothing to fetch, nothing to run
    (tmp_path / "empty").mkdir()
    refused = subprocess.run([sys.executable, "-m", "rl.cli", "report", str(tmp_path / "empty")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: {tmp_path / 'empty'} is not a run folder (it has neither config.yaml nor metrics.jsonl)"


def test_the_shown_steps_spread_over_the_run():
    assert spread_steps([1, 2, 3]) == [1, 2, 3]
    assert spread_steps(list(range(1, 101))) == [1, 34, 67, 100]


def test_chromium_renders_the_page_and_runs_none_of_the_model_output(tmp_path):
    from tests.browser import dump_dom

    run = write_run(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "rl.cli", "report", str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    dom = dump_dom(run / "report.html", tmp_path / "profile")
    assert "<title>rl report: run</title>" in dom and "pwned" not in dom.split("</title>")[0]  # the script in a completion never ran
    assert "<script" not in dom and "<img" not in dom
    assert dom.count('<tr class="sample">') == 16
    for fig_id in REQUIRED:
        assert "<svg" in figure_of(dom, fig_id), fig_id
