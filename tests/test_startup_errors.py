"""`rl train` (the real command, as a subprocess) refuses bad data and non-finite settings before anything
starts: one line on stderr naming the source or key and the fix, exit code 2, no traceback, no run
folder, no process left behind. The model is a folder that does not exist, so each check is shown to
come before any model is looked at, let alone loaded (the prompt-length case needs a tokenizer and
uses the tiny model's)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "configs/quickstart.yaml"


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (every child of the command inherits it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                pass
    return found


def rl_train(tmp_path: Path, *overrides: str, model: str | None = None) -> subprocess.CompletedProcess:
    marker = f"RL_STARTUP_TEST={uuid.uuid4().hex}"
    env = {**os.environ, "RL_STARTUP_TEST": marker.partition("=")[2]}
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "rl.cli", "train", QUICKSTART, f"model={model or tmp_path / 'no-model-here'}",
         f"run.output_dir={runs}", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert processes_with(marker) == [], "a process of the command outlived it"
    assert not runs.exists() or not any(runs.iterdir()), f"a run folder was left behind: {list(runs.iterdir())}"
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def file_source(path: Path, **settings) -> str:
    return "env.sources=" + json.dumps([{"type": "file", "path": str(path), **settings}])


def rows(count: int) -> list[dict]:
    return [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(count)]


def test_an_empty_data_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(rl_train(tmp_path, file_source(empty)), "env.sources.0 (file)", str(empty), "empty", "path")


def test_a_file_with_no_valid_row(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ["not json", {"question": "2 + 2?", "answer": ""}, [1, 2]])
    assert_one_line_error(rl_train(tmp_path, file_source(bad)), "env.sources.0 (file)", str(bad), "no valid rows",
                          "line 1: not valid JSON", "fix the rows")


def test_a_test_split_larger_than_the_file(tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", rows(5))
    assert_one_line_error(rl_train(tmp_path, file_source(small), "env.test_size=8"), str(small), "5 valid rows",
                          "test_size=8", "lower test_size")


def test_a_test_file_with_none_of_the_distributions(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{**row, "d": "mine"} for row in rows(5)])
    test = write_jsonl(tmp_path / "test.jsonl", [{**row, "d": "other"} for row in rows(3)])
    assert_one_line_error(rl_train(tmp_path, file_source(train, test_path=str(test), distribution="d")),
                          str(test), "no row belongs to a distribution", "mine")


def test_a_generator_asked_for_more_test_tasks_than_it_has(tmp_path):
    assert_one_line_error(rl_train(tmp_path, "env.test_size=100"), "env.sources.0 (arithmetic)", "add_1d",
                          "only 100 distinct problems", "lower env.test_size")


def test_a_curriculum_that_names_an_unknown_distribution(tmp_path):
    assert_one_line_error(rl_train(tmp_path, "curriculum={static: {weights: {add_1d: 1, add_9d: 1}}}"), "curriculum",
                          "add_9d")


def test_every_prompt_over_the_length_limit(tmp_path, tiny_model_dir):
    # 40 - 24 = 16 tokens for a prompt: the quickstart's (chat template, two solved examples) are all longer
    result = rl_train(tmp_path, "rollout.max_model_len=40", "rollout.max_new_tokens=24", model=str(tiny_model_dir))
    assert_one_line_error(result, "every train task of add_1d has a prompt over 16 tokens", "raise rollout.max_model_len")


@pytest.mark.parametrize("override, key, shown", [
    ("rewards.0.weight=nan", "rewards.0.weight", "'nan'"),
    ("rewards.1.weight=.inf", "rewards.1.weight", "inf"),
    ("train.lr=-inf", "train.lr", "'-inf'"),
    ("train.betas=[0.9, .nan]", "train.betas.1", "nan"),
    ("rollout.temperature=.NaN", "rollout.temperature", "nan"),
    ("rewards.0.scale=.inf", "rewards.0.scale", "inf"),  # a reward function's own parameter
    ("curriculum={ucb: {initial_weights: {add_1d: .inf, add_2d: 1}}}", "curriculum.ucb.initial_weights.add_1d", "inf"),
])
def test_a_non_finite_number_names_its_key(tmp_path, override, key, shown):
    line = assert_one_line_error(rl_train(tmp_path, override), f"`{key}` must be a finite number", f"got {shown}")
    assert "nan and inf mean nothing" in line


def test_the_prompt_check_stops_at_the_first_prompt_that_fits_and_agrees_with_drop_overlong():
    from envs.source import SourceError, TaskSource, check_prompts_fit
    from rl.config import load_config

    source = TaskSource(load_config(QUICKSTART))
    counted: list[int] = []

    def word_count(tasks):
        counted.append(len(tasks))
        return [len(t.messages[-1].content.split()) for t in tasks]

    check_prompts_fit(source, word_count, 1000)
    assert counted == [32] * 4  # one chunk per split of each distribution, not all 2 x (1000 + 32) prompts
    with pytest.raises(SourceError, match="every train task of add_1d has a prompt over 1 tokens"):
        check_prompts_fit(source, word_count, 1)
    with pytest.raises(SourceError, match="every train task of add_1d has a prompt over 1 tokens"):
        source.drop_overlong(word_count, 1)


def test_the_learner_reads_the_tasks_rl_train_built(tmp_path):
    from envs.source import TASKS_FILE, build_task_source, save_splits
    from rl.config import load_config

    config = load_config("configs/files_example.yaml")
    built = build_task_source(config)
    save_splits(built, tmp_path / TASKS_FILE)
    loaded = build_task_source(config, tmp_path / TASKS_FILE)
    assert loaded.train == built.train and loaded.test == built.test and loaded.distributions == built.distributions
    assert build_task_source(config, tmp_path / "absent.json").train == built.train  # no file: built again
