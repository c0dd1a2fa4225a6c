"""The quiet console's parts: what a child marks (rl/console.py) and what the launcher's relay shows and logs."""

import io
import logging
import os

import pytest

from rl.console import MARK, ConsoleStream, FirstLineFormatter, say
from rl.console_relay import ProcessLog, Relay


class RecordingConsole:
    """Stands in for the launcher's ConsoleWriter: what would reach the user, in order."""

    def __init__(self):
        self.events = []

    def line(self, text, err=False):
        self.events.append(("line", text))

    def bar(self, text, err, done=False):
        self.events.append(("bar-done" if done else "bar", text))


def relay(chunks: list[str], tmp_path, verbose=False, paced=True):
    """Feed `chunks` (each one write of the child) through a real pipe into a Relay; not `paced`: all in one read."""
    read_end, write_end = os.pipe()
    console = RecordingConsole()
    log = ProcessLog(tmp_path / "logs" / "child.log")
    thread = Relay(os.fdopen(read_end, "rb"), log, err=True, verbose=verbose, console=console)
    thread.start()
    for chunk in chunks if paced else ["".join(chunks)]:
        os.write(write_end, chunk.encode())
        thread.join(timeout=0.05)  # the relay reads each write on its own, as from a live child
    os.close(write_end)
    thread.join(timeout=10)
    log.close()
    return console.events, (tmp_path / "logs" / "child.log").read_text()


def marked(text: str) -> str:
    buffer = io.StringIO()
    ConsoleStream(buffer).write(text)
    return buffer.getvalue()


@pytest.mark.parametrize("paced", [True, False])
def test_marked_lines_reach_the_console_and_library_lines_only_the_log(tmp_path, paced):
    events, log = relay(paced=paced, tmp_path=tmp_path, chunks=[marked("[rl] ours\n"), "INFO 12-01 [loader.py:1] vLLM says hi\n", "FutureWarning: reduce_op\n",
                         "(MainProcess pid=7) WARNING 12-01 [cpu.py:224] Triton is not installed.\n",
                         marked("a table\n\n  second row\n")])
    assert events == [("line", "[rl] ours"), ("line", "a table"), ("line", ""), ("line", "  second row")]
    assert "vLLM says hi" in log and "FutureWarning" in log
    assert MARK not in log and "[rl] ours" not in log  # quiet: the child writes the log's copy itself (say)


def test_an_error_from_any_source_reaches_the_console(tmp_path):
    events, log = relay(["(EngineCore pid=1) ERROR 12-01 [core.py:9] engine died\n", "[E1201 18:00:00 utils.cpp:1] bad\n",
                         "a harmless line about errors\n"], tmp_path)
    assert [text for _, text in events] == ["(EngineCore pid=1) ERROR 12-01 [core.py:9] engine died", "[E1201 18:00:00 utils.cpp:1] bad"]
    assert "harmless" in log


@pytest.mark.parametrize("paced", [True, False])
def test_the_progress_bar_is_shown_as_it_moves_and_closed_once(tmp_path, paced):
    # tqdm writes "\r" + state without an ending; an unmarked library line may follow right after
    events, log = relay(paced=paced, tmp_path=tmp_path, chunks=[marked("\rtrain:  0%| 0/2"), "[vllm.x] glued after the bar\n", marked("\rtrain:  0%| 0/2"),
                         marked("\rtrain: 50%| 1/2"), marked("[learner] a line while the bar is open\n"),
                         marked("\rtrain: 100%| 2/2"), marked("\n")])
    assert events == [("bar", "train:  0%| 0/2"), ("bar", "train: 50%| 1/2"), ("line", "[learner] a line while the bar is open"),
                      ("bar", "train: 100%| 2/2"), ("bar-done", "train: 100%| 2/2")]
    assert "[vllm.x] glued after the bar\n" in log and "train:" not in log


def test_verbose_shows_everything_and_logs_it(tmp_path):
    events, log = relay(["INFO vLLM line\n", "\rLoading: 50%", "\rLoading: 100%", "\n", "plain\n"], tmp_path, verbose=True)
    assert events == [("line", "INFO vLLM line"), ("bar", "Loading: 50%"), ("bar", "Loading: 100%"), ("bar-done", "Loading: 100%"),
                      ("line", "plain")]
    assert "INFO vLLM line\n" in log and "plain\n" in log


def test_a_crash_summary_is_the_last_exception_line(tmp_path):
    log = ProcessLog(tmp_path / "learner.log")
    for line in ("Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "[rank0]: safetensors_rust.SafetensorError: bad header", ""):
        log.write(line, "\n")
    assert log.last_exception() == "safetensors_rust.SafetensorError: bad header"


def test_say_writes_a_marked_console_copy_and_a_plain_log_copy(monkeypatch, capsys):
    monkeypatch.setenv("RL_CONSOLE", "1")
    say("[rl] hello")
    assert capsys.readouterr().out == "[rl] hello\n" + MARK + "[rl] hello\n"
    monkeypatch.delenv("RL_CONSOLE")
    say("[rl] plain")  # outside `rl train`: a plain print
    assert capsys.readouterr().out == "[rl] plain\n"


def test_a_logged_traceback_is_one_console_line_naming_the_log(monkeypatch):
    monkeypatch.setenv("RL_LOG_FILE", "/runs/x/logs/worker-0.log")
    message = "reward 'raises' failed: Traceback (most recent call last):\n  File \"r.py\", line 3\nValueError: always fails\n"
    record = logging.LogRecord("rewards", logging.WARNING, __file__, 1, message, None, None)
    assert FirstLineFormatter("[%(name)s] %(message)s").format(record) == \
        "[rewards] reward 'raises' failed: ValueError: always fails (details in /runs/x/logs/worker-0.log)"


def test_a_line_from_another_process_never_lands_inside_the_bar(capsys):
    from rl.console_relay import ConsoleWriter

    console = ConsoleWriter()
    console.bar("train: 50%", err=True)
    console.line("[rollout] worker 0 joined", err=True)
    console.bar("train: 100%", err=True, done=True)
    # not a terminal: the bar's line is ended before the other line, and drawn again below it
    assert capsys.readouterr().err == "\rtrain: 50%\n[rollout] worker 0 joined\n\rtrain: 100%\n"
