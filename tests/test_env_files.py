"""Loading tasks from JSONL and Parquet files (envs/files.py).

tests/data/malformed.jsonl holds, by line (columns question/answer, distribution column `topic`):
  1-3 valid (answer a string, the int 3, the float 2.5); 4 blank (ignored);
  5 not valid JSON; 6 a JSON list, not an object; 7 no question; 8 a blank question;
  9 a question that is a list; 10 no answer; 11 an empty answer; 12 answer true; 13 answer a list;
  14 answer an object; 15 answer null; 16 topic a number; 17 topic empty; 18 no topic;
  19 valid; 20 the number 42, not an object; 21 valid; 22 answer NaN; 23 only spaces (ignored);
  24 valid (answer 9.0 -> "9").
Lines 16-18 are malformed only when `topic` is the distribution column. The gsm8k and math
specific cases (no `####`, no `\\boxed{}`) are written to temporary files below.
"""

import json
from pathlib import Path

import pytest

from envs import files
from envs.files import DataError, build_splits, check_source, read_rows
from envs.prompts import PromptStyle
from rewards.math_answer import math_answer
from rl.config import FileSource

DATA = Path(__file__).parent / "data"
GSM8K = str(DATA / "gsm8k_sample.jsonl")
MATH = str(DATA / "math_sample.jsonl")
MALFORMED = str(DATA / "malformed.jsonl")
STYLE = PromptStyle(instruction=files.DEFAULT_INSTRUCTION)

GSM8K_ANSWERS = ["54", "3750", "700", "12", "8400", "39", "2.5", "-7", "14000", "4", "16.5", "400", "75000", "30"]
MATH_ANSWERS = ["5", "\\frac{1}{2}", "5", "24", "23", "6", "15", "2\\sqrt{3}", "\\frac{3}{4}", "12", "\\frac{1}{3}",
                "\\frac{6}{5}", "9\\pi", "\\frac{\\sqrt{3}}{2}"]
MALFORMED_WITH_TOPIC = [
    (5, "not valid JSON"),
    (6, "not a JSON object (got a list)"),
    (7, "missing 'question'"),
    (8, "'question' is empty"),
    (9, "'question' is a list, expected a string"),
    (10, "missing 'answer'"),
    (11, "'answer' is empty"),
    (12, "'answer' is a boolean, expected a string or a number"),
    (13, "'answer' is a list, expected a string or a number"),
    (14, "'answer' is an object, expected a string or a number"),
    (15, "'answer' is null, expected a string or a number"),
    (16, "'topic' is a number, expected a non-empty string (distribution name)"),
    (17, "'topic' is empty, expected a non-empty string (distribution name)"),
    (18, "missing 'topic'"),
    (20, "not a JSON object (got a number)"),
    (22, "'answer' is nan, expected a finite number"),
]


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def as_tuples(loaded):
    return [(r.question, r.answer, r.distribution, r.line, r.metadata) for r in loaded.records]


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("stem", ["gsm8k_sample", "math_sample"])
def test_jsonl_and_parquet_give_the_same_records(stem):
    jsonl = read_rows(DATA / f"{stem}.jsonl", FileSource(path="x", name=stem))
    parquet = read_rows(DATA / f"{stem}.parquet", FileSource(path="x", name=stem))
    assert len(jsonl.records) == 14 and not jsonl.skipped and not parquet.skipped
    assert as_tuples(jsonl) == as_tuples(parquet)
    assert jsonl.format == parquet.format


def test_gsm8k_extraction():
    loaded = read_rows(GSM8K, FileSource(path=GSM8K))
    assert loaded.format == "gsm8k"
    assert [r.answer for r in loaded.records] == GSM8K_ANSWERS  # 3,750 -> 3750, 14,000 -> 14000
    assert [r.line for r in loaded.records] == list(range(1, 15))
    first = loaded.records[0]
    assert first.question.startswith("Mia has 3 boxes")
    assert first.metadata["solution"].endswith("72 - 18 = <<72-18=54>>54 crayons.")
    assert "####" not in first.metadata["solution"]
    assert read_rows(GSM8K, FileSource(path=GSM8K, format="gsm8k")).records == loaded.records


@pytest.mark.parametrize("text, answer", [
    ("a\n#### 1,234", "1234"),
    ("a\n#### 12,345,678", "12345678"),
    ("a\n####   -1,000.5  ", "-1000.5"),
    ("#### 7", "7"),
    ("x #### 1\ny\n#### 2", "2"),  # the last mark counts
    ("a\n#### 3, 4", "3, 4"),  # not a thousands separator
])
def test_gsm8k_answer(text, answer):
    assert files.gsm8k_answer(text, "answer")[0] == answer


def test_math_extraction():
    loaded = read_rows(MATH, FileSource(path=MATH))
    assert loaded.format == "math"
    assert [r.answer for r in loaded.records] == MATH_ANSWERS
    assert loaded.records[1].metadata["solution"].endswith("= \\boxed{\\frac{1}{2}}$.")
    assert read_rows(MATH, FileSource(path=MATH, format="math")).records == loaded.records


def test_math_last_boxed_with_nested_braces(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": "p", "solution": "First \\boxed{1}, then \\boxed{\\frac{\\sqrt{2}}{\\left(1+\\frac{1}{2}\\right)}}."},
    ])
    assert read_rows(path, FileSource(path=path)).records[0].answer == "\\frac{\\sqrt{2}}{\\left(1+\\frac{1}{2}\\right)}"


def test_plain_and_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"prompt": "What is 2 + 2?", "target": 4, "kind": "easy"},
        {"prompt": "What is 6 * 7?", "target": "42", "kind": "easy"},
    ])
    loaded = read_rows(path, FileSource(path=path, question="prompt", answer="target"))
    assert loaded.format == "plain"
    assert [(r.question, r.answer, r.distribution, r.metadata) for r in loaded.records] == [
        ("What is 2 + 2?", "4", "qa", {}), ("What is 6 * 7?", "42", "qa", {})]


def test_auto_problem_with_answer_column_is_plain(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "What is 1 + 2?", "answer": "3"}])
    loaded = read_rows(path, FileSource(path=path))
    assert loaded.format == "plain" and loaded.records[0].question == "What is 1 + 2?"


def test_gsm8k_and_math_malformed_rows(tmp_path):
    gsm = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "q1", "answer": "r\n#### 5"},
        {"question": "q2", "answer": "reasoning but no final line"},
        {"question": "q3", "answer": "r\n####   "},
        {"question": "q4", "answer": "r\n#### 6"},
    ])
    loaded = read_rows(gsm, FileSource(path=gsm))
    assert loaded.format == "gsm8k" and [r.answer for r in loaded.records] == ["5", "6"]
    assert loaded.skipped == [(2, "'answer' has no '#### <answer>' line (format gsm8k)"),
                              (3, "'answer' has nothing after '####'")]
    maths = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": "p1", "solution": "so \\boxed{2}"},
        {"problem": "p2", "solution": "no box here"},
        {"problem": "p3", "solution": "unclosed \\boxed{\\frac{1}{2}"},
        {"problem": "p4", "solution": "empty \\boxed{ }"},
    ])
    loaded = read_rows(maths, FileSource(path=maths))
    assert [r.answer for r in loaded.records] == ["2"]
    assert [line for line, _ in loaded.skipped] == [2, 3, 4]
    assert "\\boxed{}" in loaded.skipped[0][1]


# ---------------------------------------------------------------- distributions


def test_distribution_column_vs_file_stem():
    by_level = read_rows(MATH, FileSource(path=MATH, distribution="level"))
    assert [r.distribution for r in by_level.records] == ["Level 1"] * 7 + ["Level 2"] * 7
    by_type = read_rows(MATH, FileSource(path=MATH, distribution="type"))
    assert by_type.records[0].distribution == "Algebra"
    assert {r.distribution for r in read_rows(MATH, FileSource(path=MATH)).records} == {"math_sample"}
    assert {r.distribution for r in read_rows(MATH, FileSource(path=MATH, name="my_math")).records} == {"my_math"}
    train, test, warnings = build_splits(FileSource(path=MATH, distribution="level"), None, 2, 0, STYLE)
    assert list(train) == list(test) == ["Level 1", "Level 2"] and warnings == []
    assert [t.task_id for t in test["Level 2"]] == ["Level 2/test/0", "Level 2/test/1"]


# ---------------------------------------------------------------- malformed rows


def test_malformed_rows_are_skipped_with_one_warning():
    source = FileSource(path=MALFORMED, distribution="topic")
    loaded = read_rows(MALFORMED, source)
    assert loaded.skipped == MALFORMED_WITH_TOPIC
    assert [(r.line, r.answer, r.distribution) for r in loaded.records] == [
        (1, "5", "sums"), (2, "3", "sums"), (3, "2.5", "halves"), (19, "18", "sums"), (21, "2.5", "halves"),
        (24, "9", "products")]
    # without the distribution column, lines 16-18 are valid
    plain = read_rows(MALFORMED, FileSource(path=MALFORMED))
    assert [line for line, _ in plain.skipped] == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 22]
    train, test, warnings = build_splits(FileSource(path=MALFORMED), None, 2, 0, STYLE)
    listed = "; ".join(f"line {line}: {reason}" for line, reason in plain.skipped[:10])
    assert warnings == [f"{MALFORMED}: skipped 13 malformed rows ({listed}; and 3 more)"]
    assert len(train["malformed"]) + len(test["malformed"]) == 9


def test_strict_raises_naming_file_and_line():
    with pytest.raises(DataError) as err:
        read_rows(MALFORMED, FileSource(path=MALFORMED, strict=True))
    message = str(err.value)
    assert MALFORMED in message and "13 malformed rows" in message
    assert "line 5: not valid JSON" in message and "line 9: 'question' is a list, expected a string" in message
    assert "line 10" not in message  # only the first few are listed
    assert "strict: false" in message
    # a clean file is fine in strict mode
    assert len(read_rows(GSM8K, FileSource(path=GSM8K, strict=True)).records) == 14


def test_no_valid_rows_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"question": "q"', {"question": "", "answer": "1"}])
    with pytest.raises(DataError, match="bad.jsonl: no valid rows.*line 1: not valid JSON"):
        read_rows(path, FileSource(path=path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        read_rows(empty, FileSource(path=str(empty)))


def test_mapped_column_absent_from_every_row():
    with pytest.raises(DataError, match="no row has the question column 'prompt'.*columns found: answer, question"):
        read_rows(GSM8K, FileSource(path=GSM8K, question="prompt"))
    with pytest.raises(DataError, match="no row has the distribution column 'levels'.*level, problem, solution, type"):
        read_rows(MATH, FileSource(path=MATH, distribution="levels"))
    with pytest.raises(DataError, match="answer column 'answer'"):
        read_rows(MATH, FileSource(path=MATH, format="plain", question="problem"))


# ---------------------------------------------------------------- files


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = FileSource(path="data/nope.jsonl")
    absolute = str(tmp_path / "data" / "nope.jsonl")
    for call in (lambda: read_rows(source.path, source), lambda: check_source(source),
                 lambda: build_splits(source, None, 2, 0, STYLE)):
        with pytest.raises(DataError, match="file not found") as err:
            call()
        assert "data/nope.jsonl" in str(err.value) and absolute in str(err.value)
    with pytest.raises(DataError, match="missing_test.parquet"):
        check_source(FileSource(path=GSM8K, test_path="missing_test.parquet"))
    check_source(FileSource(path=GSM8K, test_path=str(DATA / "math_sample.parquet")))


def test_unknown_extension_and_unreadable_files(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("question,answer\n")
    with pytest.raises(DataError, match="unknown file type '.csv'.*jsonl.*parquet"):
        check_source(FileSource(path=str(csv)))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        read_rows(broken, FileSource(path=str(broken)))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DataError, match="latin.jsonl: not UTF-8"):
        read_rows(latin, FileSource(path=str(latin)))


# ---------------------------------------------------------------- splits


def test_splits_are_disjoint_deterministic_and_sized():
    source = FileSource(path=GSM8K)
    train, test, warnings = build_splits(source, None, 4, seed=1, style=STYLE)
    assert warnings == [] and list(train) == list(test) == ["gsm8k_sample"]
    train, test = train["gsm8k_sample"], test["gsm8k_sample"]
    assert len(test) == 4 and len(train) == 10
    assert not {t.messages[-1].content for t in train} & {t.messages[-1].content for t in test}
    assert sorted(t.metadata["line"] for t in train + test) == list(range(1, 15))
    assert [t.task_id for t in train] == [f"gsm8k_sample/train/{i}" for i in range(10)]
    again = build_splits(source, None, 4, seed=1, style=STYLE)
    assert again[0]["gsm8k_sample"] == train and again[1]["gsm8k_sample"] == test
    other = build_splits(source, None, 4, seed=2, style=STYLE)[1]["gsm8k_sample"]
    assert [t.metadata["line"] for t in other] != [t.metadata["line"] for t in test]
    capped = build_splits(source, 3, 4, seed=1, style=STYLE)
    assert capped[0]["gsm8k_sample"] == train[:3] and capped[1]["gsm8k_sample"] == test


def test_task_contents():
    _, test, _ = build_splits(FileSource(path=MATH), None, 2, 0, STYLE)
    task = test["math_sample"][0]
    line = task.metadata["line"]
    assert task.metadata == {"file": MATH, "line": line, "solution": task.metadata["solution"]}
    assert task.answer == MATH_ANSWERS[line - 1]
    assert task.distribution == "math_sample" and [m.role for m in task.messages] == ["user"]
    assert task.messages[0].content.endswith("\n\nPut the final answer in \\boxed{}.")
    plain = build_splits(FileSource(path=MALFORMED), None, 2, 0, STYLE)[0]["malformed"][0]
    assert set(plain.metadata) == {"file", "line"}


def test_test_size_too_large():
    with pytest.raises(DataError, match="'Level 1' has 7 valid rows.*test_size=7.*lower test_size.*test_path"):
        build_splits(FileSource(path=MATH, distribution="level"), None, 7, 0, STYLE)


def test_duplicate_questions_never_reach_train(tmp_path):
    rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]
    path = write_jsonl(tmp_path / "dup.jsonl", rows + rows)  # every question twice
    for seed in range(5):
        train, test, warnings = build_splits(FileSource(path=path), None, 3, seed, STYLE)
        test_questions = {t.messages[-1].content for t in test["dup"]}
        assert not test_questions & {t.messages[-1].content for t in train["dup"]}
        assert any("whose question is also in the test split" in w for w in warnings)


def test_test_path(tmp_path):
    train_rows = [{"question": f"What is {i} * 2?", "answer": str(2 * i)} for i in range(8)]
    test_rows = [{"question": f"What is {i} * 2?", "answer": str(2 * i)} for i in range(6, 12)]
    train_path = write_jsonl(tmp_path / "train.jsonl", train_rows)
    test_path = write_jsonl(tmp_path / "test.jsonl", test_rows)
    source = FileSource(path=train_path, test_path=test_path)
    train, test, warnings = build_splits(source, None, 100, 0, STYLE)
    assert list(train) == list(test) == ["train"]  # both splits are named after `path`
    assert sorted(int(t.answer) for t in test["train"]) == [12, 14, 16, 18, 20, 22]
    assert sorted(int(t.answer) for t in train["train"]) == [0, 2, 4, 6, 8, 10]  # 6 and 7 are in test
    assert {t.metadata["file"] for t in test["train"]} == {test_path}
    assert {t.metadata["file"] for t in train["train"]} == {train_path}
    assert warnings == [f"{train_path}: dropped 2 training rows of 'train' whose question is also in the test split"]
    small = build_splits(source, 2, 3, 0, STYLE)
    assert len(small[0]["train"]) == 2 and len(small[1]["train"]) == 3
    assert small[1]["train"] == build_splits(source, None, 3, 0, STYLE)[1]["train"]


def test_test_path_shares_the_source_name():
    source = FileSource(path=str(DATA / "gsm8k_sample.jsonl"), test_path=str(DATA / "math_sample.parquet"),
                        name="mixed")
    train, test, warnings = build_splits(source, None, 5, 0, STYLE)
    assert warnings == []
    assert list(train) == list(test) == ["mixed"]
    assert len(test["mixed"]) == 5 and len(train["mixed"]) == 14
    assert all(t.metadata["file"].endswith("math_sample.parquet") for t in test["mixed"])


def test_test_path_distributions_must_match_train(tmp_path):
    test_path = write_jsonl(tmp_path / "levels.jsonl", [
        {"problem": "What is 3 + 4?", "solution": "\\boxed{7}", "level": "Level 1"},
        {"problem": "What is 3 * 4?", "solution": "\\boxed{12}", "level": "Level 3"},
    ])
    source = FileSource(path=MATH, test_path=test_path, distribution="level")
    train, test, warnings = build_splits(source, None, 4, 0, STYLE)
    assert list(train) == list(test) == ["Level 1", "Level 2"]
    assert [t.answer for t in test["Level 1"]] == ["7"] and test["Level 2"] == []
    assert len(train["Level 1"]) == len(train["Level 2"]) == 7
    assert warnings == [f"{test_path}: distributions not in {MATH} are ignored: Level 3",
                        f"{test_path}: no test rows for distribution 'Level 2' of {MATH}"]


def test_top_level_string_and_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "What is 1 + 1?", "answer": "2"}\n"just text"\n')
    loaded = read_rows(path, FileSource(path=str(path)))
    assert [r.answer for r in loaded.records] == ["2"]
    assert loaded.skipped == [(2, "not a JSON object (got a string)")]


# ---------------------------------------------------------------- rewards


@pytest.mark.parametrize("path", [GSM8K, MATH, str(DATA / "gsm8k_sample.parquet"), str(DATA / "math_sample.parquet")])
def test_reference_answers_score_correct(path):
    train, test, _ = build_splits(FileSource(path=path), None, 3, 0, STYLE)
    tasks = [t for group in (train, test) for tasks in group.values() for t in tasks]
    assert len(tasks) == 14
    for task in tasks:
        assert math_answer(f"The answer is \\boxed{{{task.answer}}}.", task) == 1.0, task.answer
        assert math_answer("The answer is \\boxed{123456789}.", task) == 0.0
