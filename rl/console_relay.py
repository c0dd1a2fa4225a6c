"""The launcher's side of the quiet console: every child's stdout and stderr come through pipes;
all of it is written to the child's log file, and only what should reach the user reaches the console.

Quiet (the default): the console gets the lines a child marked as ours (rl/console.py), the
progress bar, and any unmarked line that reports an ERROR. `-v`: nothing is marked and every line
goes to the console as well as to the log. The launcher owns the console, so a line from one
process never lands in the middle of another's progress bar: the bar is lifted, the line written,
the bar drawn again.
"""

from __future__ import annotations

import codecs
import os
import re
import sys
import threading
from collections import deque
from pathlib import Path

from rl.console import END, MARK

ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|^\[E\d{4} ")  # vLLM, Python logging, DeepSpeed, torch's C++ logs
EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*)")  # torch prefixes [rankN]:
SEGMENT = re.compile(rf"([^\r\n{END}]*)([\r\n{END}])")


class ConsoleWriter:
    """Lines from several processes on one console, with one progress bar kept at the bottom."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bar_err: bool | None = None  # which stream holds the open bar; None: no bar open
        self.bar_text = ""
        self.bar_shown = False

    @staticmethod
    def stream(err: bool):
        return sys.stderr if err else sys.stdout  # looked up each time: tests swap them

    def line(self, text: str, err: bool = False) -> None:
        with self.lock:
            self._lift_bar()
            stream = self.stream(err)
            stream.write(text + "\n")
            stream.flush()
            self._redraw_bar()

    def bar(self, text: str, err: bool, done: bool = False) -> None:
        """A progress bar's new state; `done`: its last one (the line stays)."""
        with self.lock:
            if self.bar_err is not None and self.bar_err != err:
                self._lift_bar()
            stream = self.stream(err)
            stream.write("\r" + text + ("\n" if done else ""))
            stream.flush()
            self.bar_err, self.bar_text, self.bar_shown = (None, "", False) if done else (err, text, True)

    def _lift_bar(self) -> None:
        if self.bar_err is None or not self.bar_shown:
            return
        stream = self.stream(self.bar_err)
        stream.write("\r\x1b[K" if stream.isatty() else "\n")  # a file or pipe keeps the bar's line
        stream.flush()
        self.bar_shown = False

    def _redraw_bar(self) -> None:
        if self.bar_err is not None and self.stream(self.bar_err).isatty():
            self.stream(self.bar_err).write("\r" + self.bar_text)
            self.stream(self.bar_err).flush()
            self.bar_shown = True


CONSOLE = ConsoleWriter()


class ProcessLog:
    """One child's log file (both of its streams) and its last lines, for a crash summary."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()
        self.recent: deque[str] = deque(maxlen=200)

    def write(self, text: str, terminator: str) -> None:
        with self.lock:
            self.file.write(text + terminator)
            self.file.flush()
            if terminator == "\n":
                self.recent.append(text)

    def last_exception(self) -> str | None:
        """The last 'SomeError: why' line the process wrote (the end of its traceback), if any."""
        with self.lock:
            matches = (EXCEPTION_LINE.match(line.strip()) for line in reversed(self.recent))
            return next((match.group(1) for match in matches if match), None)

    def close(self) -> None:
        with self.lock:
            self.file.close()


class Relay(threading.Thread):
    """Copies one pipe of a child to its log and, as rl/console.py marked it (or all of it with -v), to the console."""

    def __init__(self, pipe, log: ProcessLog, err: bool, verbose: bool, console: ConsoleWriter = CONSOLE):
        super().__init__(daemon=True, name=f"relay-{log.path.name}-{'err' if err else 'out'}")
        self.pipe, self.log, self.err, self.verbose, self.console = pipe, log, err, verbose, console
        self.open_bar = False  # the segment being received was shown as a progress bar
        self.after_cr = False  # the last segment ended with \r: what follows redraws a bar
        self.bar_text = ""  # the bar's state last shown

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        fd = self.pipe.fileno()
        while chunk := os.read(fd, 65536):
            try:
                pending = self.consume(pending + decoder.decode(chunk))
            except (OSError, ValueError):  # a closed console or a full disk: keep draining, or the child blocks
                pending = ""
        pending += decoder.decode(b"", final=True)
        if pending:
            self.segment(pending, "\n")
        self.pipe.close()

    def consume(self, text: str) -> str:
        """Handle every complete segment of `text` (ended by \\n, \\r or an end mark); return the incomplete rest."""
        end = 0
        for match in SEGMENT.finditer(text):
            self.segment(match.group(1), match.group(2))
            self.after_cr = match.group(2) == "\r"
            end = match.end()
        rest = text[end:]
        if rest and self.verbose and self.after_cr:  # unmarked, a bar's "\r" + state has no end mark: show it now
            self.segment(rest, END)
            self.after_cr = False
            return ""
        return rest

    def shown(self, text: str) -> bool:
        return self.verbose or text.startswith(MARK)

    def show_bar(self, text: str) -> None:
        if not (self.open_bar and text == self.bar_text):  # the same state again: a tty would not change
            self.console.bar(text, self.err)
        self.open_bar, self.bar_text = True, text

    def segment(self, text: str, terminator: str) -> None:
        if not self.shown(text):
            if text or terminator == "\n":
                self.log.write(text, terminator)
            if terminator == "\n" and ERROR_LINE.search(text):
                self.console.line(text, self.err)
            return
        clean = text.replace(MARK, "")
        if self.verbose and (clean or terminator == "\n"):
            self.log.write(clean, terminator)  # quiet: the child wrote the log's copy unmarked
        if terminator != "\n":
            if clean:
                self.show_bar(clean)
        elif self.open_bar and (not clean or same_bar(clean, self.bar_text)):  # the bar's last state stays on its line
            self.console.bar(clean or self.bar_text, self.err, done=True)
            self.open_bar = False
        else:
            self.console.line(clean, self.err)


def same_bar(text: str, bar_text: str) -> bool:
    """Both are states of one progress bar: the same description before its first ':'."""
    return ":" in text and text.partition(":")[0] == bar_text.partition(":")[0]


def relay_output(process, log: ProcessLog, verbose: bool) -> list[Relay]:
    """Start copying a child's stdout and stderr pipes (Popen with stdout=PIPE, stderr=PIPE)."""
    relays = [Relay(process.stdout, log, False, verbose), Relay(process.stderr, log, True, verbose)]
    for relay in relays:
        relay.start()
    return relays
