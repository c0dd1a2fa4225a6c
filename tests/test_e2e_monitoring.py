"""What a user sees of a real run: a quiet console (library lines only in RUN/logs/), a crash that
names its log file, and `rl report`'s page as headless chromium renders it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl.config import LoggingConfig
from rl.report_plots import CURVES
from tests.browser import dump_dom, ink_share, screenshot
from tests.test_e2e import REPO, run_dir_of, write_config

pytestmark = pytest.mark.e2e

OUR_PREFIX = re.compile(r"^\[(rl|learner|rollout|envs|rewards|eval)(\.[\w.]+)?\] ")
BAR = re.compile(r"^train: +\d+%\|")
TABLE = re.compile(r"^[┏┃┡│├└]")
TABLE_TITLE = re.compile(r"^ *held-out (evaluation|accuracy)")


@pytest.fixture(scope="module")
def console_run(tmp_path_factory, tiny_model_dir):
    """One real 2-step run with the progress bar and an evaluation at every step; its console and folder."""
    tmp_path = tmp_path_factory.mktemp("console")
    config = write_config(tmp_path, tiny_model_dir, eval_every=1)
    result = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config), "logging.progress=true"], cwd=REPO,
                            timeout=600, capture_output=True, text=True)
    (tmp_path / "console-stdout.txt").write_text(result.stdout)  # to read when a check fails
    (tmp_path / "console-stderr.txt").write_text(result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, run_dir_of(tmp_path)


def foreign_lines(console: str, plan: str) -> list[str]:
    """Console lines that are none of ours: [prefix] lines, the plan, the progress bar, tables."""
    plan_lines = set(plan.splitlines())
    lines = [line for line in re.split(r"[\r\n]", console) if line.strip()]
    return [line for line in lines if not (OUR_PREFIX.match(line) or BAR.match(line) or TABLE.match(line)
                                           or TABLE_TITLE.match(line) or line in plan_lines)]


def test_the_console_shows_only_our_lines_and_the_logs_hold_the_libraries(console_run):
    result, run_dir = console_run
    plan = (run_dir / "plan.txt").read_text()
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert foreign_lines(text, plan) == [], f"library lines reached the console's {name}"
    assert "held-out evaluation at step 1" in result.stdout and "[rl] saved the trained policy" in result.stdout
    assert re.search(r"train: 100%\|.*2/2", result.stderr), "no progress bar"
    assert "[learner] rollout worker 0 joined" in result.stderr and "[rollout] worker 0 (local-0) joined" in result.stderr
    assert f"[rl] report: {run_dir / 'report.html'}" in result.stdout and (run_dir / "report.html").is_file()

    worker = (run_dir / "logs" / "worker-0.log").read_text()
    learner = (run_dir / "logs" / "learner.log").read_text()
    assert re.search(r"^\(\w+ pid=\d+\) INFO \d\d-\d\d [\d:]+ \[\w+\.py:\d+\] ", worker, re.M), "no vLLM INFO line in the worker's log"
    assert "FutureWarning" in worker  # a Python warning (torch's reduce_op, raised inside vLLM)
    assert "[vllm.triton_utils" in worker or "Triton" in worker
    assert "Loading weights" in learner  # transformers' progress bar
    assert "deepspeed" in learner.lower()
    # our lines are in the logs too, without the console's marks
    assert "[rl] saved the trained policy" in learner and "[rollout] worker 0 (local-0) joined" in worker
    assert "\x1e" not in learner + worker
    # a reward's traceback: one line on the console naming the log, all of it in the log
    assert "Traceback" not in result.stdout + result.stderr
    assert "ValueError: this reward always fails (details in " in result.stderr
    assert "Traceback (most recent call last)" in worker


def test_a_crash_names_the_log_that_holds_its_traceback(tmp_path, tiny_model_dir):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")  # passes the launcher's checks, fails to load
    config = write_config(tmp_path, broken)
    quiet = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config)], cwd=REPO, timeout=300, capture_output=True, text=True)
    assert quiet.returncode != 0
    log = run_dir_of(tmp_path) / "logs" / "learner.log"
    console = quiet.stdout + quiet.stderr
    assert f"the traceback is in {log}" in console, console[-3000:]
    assert re.search(r"the learner exited with code 1 during start-up \(\S*Error: .+; the traceback is in", console), console[-3000:]
    assert "Traceback (most recent call last)" in log.read_text() and "Traceback" not in console

    (tmp_path / "runs").rename(tmp_path / "quiet-runs")
    verbose = subprocess.run([sys.executable, "-m", "rl.cli", "train", str(config), "-v"], cwd=REPO, timeout=300,
                             capture_output=True, text=True)
    assert verbose.returncode != 0
    assert "Traceback (most recent call last)" in verbose.stderr  # -v: everything, as before
    assert "Traceback (most recent call last)" in (run_dir_of(tmp_path) / "logs" / "learner.log").read_text()


def test_the_report_of_a_real_run_renders_in_headless_chromium(console_run, tmp_path):
    _, run_dir = console_run
    page = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "rl.cli", "report", str(run_dir), "--output", str(page)], cwd=REPO,
                          timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    dom = dump_dom(page, tmp_path / "profile")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recorded = {key for record in metrics for key in record}
    for curve in CURVES:
        figure = re.search(rf'<figure id="{curve.id}"><figcaption>{re.escape(curve.title)}</figcaption>(.*?)</figure>', dom, re.S)
        assert figure, f"the page has no {curve.title} plot"
        assert ("<svg" in figure.group(1)) == any(key in recorded for key in curve.keys), curve.id
    for fig_id in ("plot-heldout", "plot-curriculum"):  # this run evaluates every step and has two distributions
        assert re.search(rf'<figure id="{fig_id}">.*?<svg.*?</figure>', dom, re.S), fig_id
    assert '<section id="completions">' in dom
    if "completions_every" in LoggingConfig.model_fields:  # the run writes RUN/completions.jsonl: its rows are on the page
        rows = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
        assert dom.count('<tr class="sample">') >= 2
        from html import escape

        assert any(escape(row["completion"]) in dom for row in rows), "no completion of the run on the page"
    width, height = screenshot(page, tmp_path / "report.png", tmp_path / "profile")
    assert (width, height) == (1200, 2000)
    assert ink_share(tmp_path / "report.png") > 0.02, "the screenshot is blank"
