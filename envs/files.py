"""Tasks from files of questions and answers: JSON Lines (.jsonl) and Parquet (.parquet).

A `FileSource` (rl/config.py) names the file, its columns and its format:

- Columns: `question`/`answer` name the question and answer columns. Default `question`/`answer`;
  for MATH-style files `problem`/`solution` (format `math`, or `auto` detecting `problem` without a
  `question` column). `distribution` names a column whose value is each row's distribution; without
  it the whole file is one distribution called `name`, default the stem of `path` (also for the
  rows of `test_path`, so both splits share the name).
- Formats: `plain` takes the answer column as the reference answer. `gsm8k` expects reasoning
  ending in a line `#### 42`: the reference is what follows the last `####`, with thousands
  separators removed (1,234 -> 1234), and the reasoning is kept as metadata["solution"]. `math`
  expects a full solution: the reference is its last `\\boxed{...}` (nested braces allowed), the
  solution is kept. `auto` reads the file first: math when the columns are problem/solution, else
  gsm8k when most answers (strings) contain `####`, else plain.
- Line numbers: JSONL lines are counted from 1, blank lines included (and skipped); a Parquet row's
  "line" is its 1-based row number.

Malformed rows (not JSON, not an object, a question that is missing, empty or not a string, an
answer that is missing, empty, or neither a string nor a finite number, a gsm8k answer without
`####`, a math solution without `\\boxed{}`, a distribution value that is not a non-empty string)
are skipped; `build_splits` returns one warning per file that lists them. With `strict: true` they
are an error. Numbers are accepted as answers: 42 -> "42", 2.5 -> "2.5", 3.0 -> "3".

Splits: with `test_path`, train comes from `path` and test from `test_path` (at most `test_size`
rows per distribution, a seeded sample); otherwise every distribution holds out `test_size` rows
chosen by a shuffle seeded with f"{seed}-{distribution}", and the rest is train. A training row
whose question text also appears in the test split (or anywhere in `test_path`) is dropped.
`train_size` caps the training rows per distribution, taken in the shuffled order.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.prompts import PromptStyle
from rewards.boxed import extract_boxed
from rl.config import FileSource
from rl.wire import Task

DEFAULT_INSTRUCTION = "Put the final answer in \\boxed{}."
DEFAULT_SYSTEM_PROMPT = None
DEFAULT_REWARDS = [{"name": "math_answer", "weight": 1.0}, {"name": "boxed_format", "weight": 0.1}]

EXTENSIONS = (".jsonl", ".parquet")
MAX_LISTED = 10  # malformed rows named in a warning
MAX_LISTED_STRICT = 5  # malformed rows named in a strict-mode error
GSM8K_MARK = "####"
# A comma between digit groups of three: 1,234 and 12,345,678 (not 1,2 or a list "3, 4").
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file (and line) and what to do."""


@dataclass
class Record:
    question: str
    answer: str
    distribution: str
    line: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedRows:
    path: str
    records: list[Record]
    skipped: list[tuple[int, str]]  # (line, reason) of malformed rows, in file order
    format: str = "plain"  # the format used (auto resolved)


class Malformed(Exception):
    """One row's problem; the message is the reason shown to the user."""


# ---------------------------------------------------------------- reading raw rows


def check_file(path: str | Path) -> Path:
    """The path, or DataError if it does not exist, is not a file or has an unknown extension."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (looked for {path.resolve()}); check env.sources[].path / test_path")
    if not path.is_file():
        raise DataError(f"{path}: not a file ({path.resolve()}); give a .jsonl or .parquet file")
    if path.suffix.lower() not in EXTENSIONS:
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}; "
            "use .jsonl (one JSON object per line) or .parquet"
        )
    return path


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or a Malformed) for every non-blank line."""
    try:
        with path.open("r", encoding="utf-8-sig") as handle:  # -sig: a leading byte order mark is dropped
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except (ValueError, RecursionError):
                    yield number, Malformed("not valid JSON")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); JSONL files must be UTF-8") from err
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err})") from err


def parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from err
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from err
    yield from enumerate(table.to_pylist(), start=1)


def raw_rows(path: Path) -> list[tuple[int, Any]]:
    return list(jsonl_rows(path) if path.suffix.lower() == ".jsonl" else parquet_rows(path))


# ---------------------------------------------------------------- columns and format


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def resolve_columns(source: FileSource, columns: set[str]) -> tuple[str, str]:
    """(question column, answer column) from the source, or the defaults for its format and this file."""
    math_style = source.format == "math" or (
        source.format == "auto" and "problem" in columns and "question" not in columns
    )
    question = source.question or ("problem" if math_style else "question")
    if source.answer:
        answer = source.answer
    elif source.format == "math" or (math_style and "solution" in columns and question == "problem"):
        answer = "solution"
    else:
        answer = "answer"
    return question, answer


def detect_format(source: FileSource, question: str, answer: str, rows: list[dict]) -> str:
    if source.format != "auto":
        return source.format
    if question == "problem" and answer == "solution":
        return "math"
    texts = [row[answer] for row in rows if isinstance(row.get(answer), str) and row[answer].strip()]
    if texts and sum(GSM8K_MARK in text for text in texts) * 2 > len(texts):
        return "gsm8k"
    return "plain"


# ---------------------------------------------------------------- one row


def text_field(row: dict, column: str) -> str:
    if column not in row:
        raise Malformed(f"missing '{column}'")
    value = row[column]
    if not isinstance(value, str):
        raise Malformed(f"'{column}' is {type_name(value)}, expected a string")
    if not value.strip():
        raise Malformed(f"'{column}' is empty")
    return value.strip()


def answer_field(row: dict, column: str) -> str:
    if column not in row:
        raise Malformed(f"missing '{column}'")
    value = row[column]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Malformed(f"'{column}' is {value}, expected a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise Malformed(f"'{column}' is {type_name(value)}, expected a string or a number")
    if not value.strip():
        raise Malformed(f"'{column}' is empty")
    return value.strip()


def gsm8k_answer(text: str, column: str) -> tuple[str, str]:
    """(reference answer, reasoning) of a GSM8K-style answer `reasoning ... #### 1,234`."""
    if GSM8K_MARK not in text:
        raise Malformed(f"'{column}' has no '{GSM8K_MARK} <answer>' line (format gsm8k)")
    reasoning, _, final = text.rpartition(GSM8K_MARK)
    final = THOUSANDS_COMMA.sub("", final.strip())
    if not final:
        raise Malformed(f"'{column}' has nothing after '{GSM8K_MARK}'")
    return final, reasoning.strip()


def math_answer_of(text: str, column: str) -> str:
    """The last \\boxed{...} of a MATH-style solution."""
    boxed = extract_boxed(text)
    if boxed is None:
        raise Malformed(f"'{column}' has no closed \\boxed{{}} (format math)")
    if not boxed.strip():
        raise Malformed(f"'{column}' has an empty \\boxed{{}}")
    return boxed.strip()


def parse_row(row: Any, line: int, fmt: str, question_col: str, answer_col: str,
              distribution_col: str | None, default_distribution: str) -> Record:
    if isinstance(row, Malformed):
        raise row
    if not isinstance(row, dict):
        raise Malformed(f"not a JSON object (got {type_name(row)})")
    question = text_field(row, question_col)
    answer = answer_field(row, answer_col)
    metadata: dict[str, Any] = {}
    if fmt == "gsm8k":
        answer, metadata["solution"] = gsm8k_answer(answer, answer_col)
    elif fmt == "math":
        metadata["solution"] = answer
        answer = math_answer_of(answer, answer_col)
    if distribution_col is None:
        distribution = default_distribution
    else:
        if distribution_col not in row:
            raise Malformed(f"missing '{distribution_col}'")
        distribution = row[distribution_col]
        if not isinstance(distribution, str) or not distribution.strip():
            what = "empty" if isinstance(distribution, str) else type_name(distribution)
            raise Malformed(f"'{distribution_col}' is {what}, expected a non-empty string (distribution name)")
        distribution = distribution.strip()
    return Record(question=question, answer=answer, distribution=distribution, line=line, metadata=metadata)


def describe(skipped: list[tuple[int, str]], limit: int) -> str:
    listed = "; ".join(f"line {line}: {reason}" for line, reason in skipped[:limit])
    return listed + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")


# ---------------------------------------------------------------- one file


def read_rows(path: str | Path, source: FileSource, distribution_name: str | None = None) -> LoadedRows:
    """Every valid row of one file as a Record, and the malformed rows skipped.

    `distribution_name` names the distribution when there is no distribution column (default
    `source.name`, then this file's stem). Raises DataError for a missing, unreadable or unknown
    file, a mapped column that no row has, no valid row at all, or (strict) any malformed row.
    """
    shown = str(path)
    file = check_file(path)
    rows = raw_rows(file)
    if not rows:
        raise DataError(f"{shown}: the file is empty (no rows); put one question and answer per row in it, "
                        "or point this source's path/test_path at the right file")
    objects = [row for _, row in rows if isinstance(row, dict)]
    columns = set().union(*(row.keys() for row in objects)) if objects else set()
    question_col, answer_col = resolve_columns(source, columns)
    if objects:
        for kind, column in (("question", question_col), ("answer", answer_col), ("distribution", source.distribution)):
            if column is not None and column not in columns:
                raise DataError(
                    f"{shown}: no row has the {kind} column {column!r}; "
                    f"columns found: {', '.join(sorted(columns)) or 'none'}. "
                    f"Set `{kind}:` on this file source to the right column"
                )
    fmt = detect_format(source, question_col, answer_col, objects)
    default_distribution = distribution_name or source.name or file.stem
    records, skipped = [], []
    for line, row in rows:
        try:
            records.append(
                parse_row(row, line, fmt, question_col, answer_col, source.distribution, default_distribution)
            )
        except Malformed as err:
            skipped.append((line, str(err)))
    if skipped and source.strict:
        raise DataError(
            f"{shown}: {len(skipped)} malformed row{'s' * (len(skipped) != 1)} "
            f"({describe(skipped, MAX_LISTED_STRICT)}); "
            "fix them, or set `strict: false` to skip them with a warning"
        )
    if not records:
        raise DataError(
            f"{shown}: no valid rows (format {fmt}, question column {question_col!r}, answer column {answer_col!r}): "
            f"{describe(skipped, MAX_LISTED_STRICT)}; fix the rows, or set format/question/answer on this source to match them"
        )
    return LoadedRows(path=shown, records=records, skipped=skipped, format=fmt)


def skipped_warning(loaded: LoadedRows) -> str | None:
    count = len(loaded.skipped)
    if not count:
        return None
    return f"{loaded.path}: skipped {count} malformed row{'s' * (count != 1)} ({describe(loaded.skipped, MAX_LISTED)})"


# ---------------------------------------------------------------- splits


def check_source(source: FileSource) -> None:
    """Cheap start-up check: the files exist and have a known extension (nothing is parsed)."""
    check_file(source.path)
    if source.test_path:
        check_file(source.test_path)


def by_distribution(records: list[Record]) -> dict[str, list[Record]]:
    """Records grouped by distribution, in order of first appearance."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.distribution, []).append(record)
    return groups


def shuffled(records: list[Record], seed: int, distribution: str, salt: str = "") -> list[Record]:
    out = list(records)
    random.Random(f"{seed}-{distribution}{salt}").shuffle(out)
    return out


def make_task(record: Record, split: str, index: int, file: str, style: PromptStyle) -> Task:
    return Task(
        task_id=f"{record.distribution}/{split}/{index}",
        distribution=record.distribution,
        messages=style.messages(record.question),
        answer=record.answer,
        metadata={"file": file, "line": record.line, **record.metadata},
    )


def build_splits(
    source: FileSource, train_size: int | None, test_size: int, seed: int, style: PromptStyle
) -> tuple[dict[str, list[Task]], dict[str, list[Task]], list[str]]:
    """(train tasks by distribution, test tasks by distribution, warnings); both mappings have the same keys."""
    warnings: list[str] = []
    train_file = read_rows(source.path, source)
    train_groups = by_distribution(train_file.records)
    test_groups: dict[str, list[Record]] = {}
    banned: set[str] = set()  # questions train must not contain
    if source.test_path:
        default_name = source.name or Path(source.path).stem
        test_file = read_rows(source.test_path, source, distribution_name=default_name)
        banned = {record.question for record in test_file.records}
        loaded = by_distribution(test_file.records)
        extra = [name for name in loaded if name not in train_groups]
        if extra:
            warnings.append(f"{test_file.path}: distributions not in {train_file.path} are ignored: {', '.join(extra)}")
        for name in train_groups:
            test_groups[name] = shuffled(loaded.get(name, []), seed, name, "-test")[:test_size]
            if not test_groups[name]:
                warnings.append(f"{test_file.path}: no test rows for distribution {name!r} of {train_file.path}")
        if not any(test_groups.values()):
            raise DataError(f"{test_file.path}: no row belongs to a distribution of {train_file.path} "
                            f"({', '.join(train_groups)}), so there is nothing to hold out; give both files the same "
                            "distributions (or the same `name:`)")
        files = [train_file, test_file]
        for name, rows in train_groups.items():
            train_groups[name] = shuffled(rows, seed, name)
    else:
        files = [train_file]
        for name, rows in train_groups.items():
            if len(rows) <= test_size:
                raise DataError(
                    f"{train_file.path}: distribution {name!r} has {len(rows)} valid rows, "
                    f"not more than test_size={test_size}; "
                    "lower test_size for this source or give a separate test_path"
                )
            rows = shuffled(rows, seed, name)
            test_groups[name], train_groups[name] = rows[:test_size], rows[test_size:]
            banned |= {record.question for record in test_groups[name]}

    train: dict[str, list[Task]] = {}
    test: dict[str, list[Task]] = {}
    for name, rows in train_groups.items():
        kept = [record for record in rows if record.question not in banned]
        if len(kept) < len(rows):
            warnings.append(
                f"{train_file.path}: dropped {len(rows) - len(kept)} training rows of {name!r} "
                "whose question is also in the test split"
            )
        if not kept:
            raise DataError(
                f"{train_file.path}: distribution {name!r} has no training rows left once test questions are removed"
            )
        if train_size is not None:
            kept = kept[:train_size]
        train[name] = [make_task(record, "train", i, train_file.path, style) for i, record in enumerate(kept)]
        test_path = files[-1].path
        test[name] = [make_task(record, "test", i, test_path, style) for i, record in enumerate(test_groups[name])]
    warnings[:0] = [w for w in map(skipped_warning, files) if w]
    return train, test, warnings
