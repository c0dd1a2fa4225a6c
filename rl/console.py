"""What a learner or rollout worker shows on the user's console, and what only goes to its log file.

`rl train` gives each child process pipes for stdout and stderr and writes everything that comes
through them to RUN/logs/<process>.log (see rl/console_relay.py). Everything: vLLM, DeepSpeed,
transformers, torch, Triton, Python warnings, C++ output, vLLM's engine-core subprocess. Only the
lines this module marks reach the console as well: our own messages (`say`), our loggers' records
([rl], [learner], [rollout], ...), the progress bar, the evaluation tables, and ERROR records of
any Python logger. A mark is one ASCII record-separator byte at the start of each line; the relay
strips it. Outside `rl train` (RL_CONSOLE_ENV unset: `rl eval`, `rl rollout`, tests) nothing is
marked and this module behaves like plain print and logging.basicConfig.

Marked lines go to the console only; the log file gets an unmarked copy of each (our loggers
propagate to the root logger, `say` writes twice), so it reads like a `-v` console.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys

RL_CONSOLE_ENV = "RL_CONSOLE"  # set by `rl train` for its children: "1" marks our lines
MARK = "\x1e"  # ASCII record separator; nothing else starts a line with it
END = "\x1f"  # ASCII unit separator: a marked write that ended without a newline (a progress bar's state) ends here
LOG_FILE_ENV = "RL_LOG_FILE"  # the child's own log file, named in the console's one-line summaries
OUR_LOGGERS = ("rl", "learner", "rollout", "envs", "rewards", "eval")
LOG_FORMAT = "[%(name)s] %(message)s"
TRACEBACK = "Traceback (most recent call last):"
LINE_START = re.compile(r"(?:^|(?<=[\r\n]))(?=[^\r])")


def marking() -> bool:
    return os.environ.get(RL_CONSOLE_ENV) == "1"


class ConsoleStream(io.TextIOBase):
    """A text stream whose every line reaches the console: a mark in front of each line (or
    carriage-return segment, as a progress bar writes), and an end mark after a write that left its
    line open, so that what another writer puts into the same pipe next is never taken for ours."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> int:
        if text:
            # a mark at the start of the write and after every \r or \n that more text follows
            self.target.write(LINE_START.sub(MARK, text) + ("" if text[-1] in "\r\n" else END))
            self.target.flush()
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"  # tqdm draws its bar in ASCII without one


_streams: dict[str, ConsoleStream] = {}


def console(err: bool = False):
    """The stream for console output: marked when `rl train` started this process, else stdout/stderr."""
    target = sys.stderr if err else sys.stdout
    if not marking():
        return target
    key = "err" if err else "out"
    if key not in _streams or _streams[key].target is not target:
        _streams[key] = ConsoleStream(target)
    return _streams[key]


def say(text: str, err: bool = False) -> None:
    """Print one of our messages (a [rl] line, a table): to the console, and under `rl train` to the log too."""
    plain = sys.stderr if err else sys.stdout
    if marking():
        plain.write(text + "\n")  # the log file's copy
        plain.flush()
    stream = console(err)
    stream.write(text + "\n")
    stream.flush()


class FirstLineFormatter(logging.Formatter):
    """On the console a record is one line; a traceback or a long report stays in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" not in text:
            return text
        first, *rest = text.rstrip().split("\n")
        last = rest[-1].strip() if rest else ""
        if first.endswith(TRACEBACK):  # a traceback in the message: its last line says what went wrong
            first = f"{first.removesuffix(TRACEBACK).rstrip()} {last}"
        log_file = os.environ.get(LOG_FILE_ENV)
        return first + (f" (details in {log_file})" if log_file else "")


class NotOurs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] not in OUR_LOGGERS


def setup_logging(level: int = logging.INFO) -> None:
    """Every record to stderr (the log file under `rl train`), as before. Under `rl train` also our
    loggers' records and any other logger's ERRORs to the console, one line each."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if not marking():
        return
    formatter = FirstLineFormatter(LOG_FORMAT)
    ours = logging.StreamHandler(console(err=True))
    ours.setFormatter(formatter)
    for name in OUR_LOGGERS:
        logging.getLogger(name).addHandler(ours)  # they also propagate to the root: the log file
    errors = logging.StreamHandler(console(err=True))
    errors.setLevel(logging.ERROR)
    errors.setFormatter(FirstLineFormatter("%(levelname)s " + LOG_FORMAT))
    errors.addFilter(NotOurs())
    logging.getLogger().addHandler(errors)
