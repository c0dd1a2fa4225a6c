"""The task source: mixed generators and files, reward sets per source, sampling order, start-up errors."""

from collections import Counter
from pathlib import Path

import pytest

from envs.source import SourceError, TaskSource, check_sources, reward_sets
from rl.cli import main as cli_main
from rl.config import validate

DATA = Path(__file__).parent / "data"


def mixed_config(**env):
    return validate({
        "run": {"seed": 5},
        "env": {
            "sources": [
                {"type": "arithmetic", "distributions": ["add_1d"], "few_shot": 1},
                {"type": "knights_knaves", "distributions": ["kk_3p", "kk_5p"], "system_prompt": ""},
                {"type": "countdown", "distributions": ["cd_3n"], "rewards": [{"name": "countdown", "weight": 2.0}]},
                {"type": "file", "path": str(DATA / "gsm8k_sample.jsonl")},
                {"type": "file", "path": str(DATA / "math_sample.parquet"), "distribution": "level", "instruction": "Box it."},
            ],
            "train_size": 30, "test_size": 3, **env,
        },
    })


def test_mixed_sources_build_every_distribution_with_its_own_reward_set_and_prompt():
    config = mixed_config()
    source = TaskSource(config)
    assert source.distributions == ["add_1d", "kk_3p", "kk_5p", "cd_3n", "gsm8k_sample", "Level 1", "Level 2"]
    sets = reward_sets(config)
    assert [s["name"] for s in sets["1:knights_knaves"]] == ["knights_knaves", "format"]  # the generator's default
    assert sets["2:countdown"] == [{"name": "countdown", "weight": 2.0, "on_error": 0.0}]  # the source's own
    assert [s["name"] for s in sets["3:file"]] == ["math_answer", "boxed_format"]
    for name, tasks in {**source.train, **source.test}.items():
        assert tasks and all(t.distribution == name for t in tasks)
    assert {t.reward_set for t in source.test["kk_5p"]} == {"1:knights_knaves"}
    assert {t.reward_set for t in source.test["Level 2"]} == {"4:file"}
    kk = source.test["kk_3p"][0]
    assert [m.role for m in kk.messages] == ["user"], "system_prompt '' means no system message"
    assert "<answer>" in kk.messages[-1].content
    assert source.test["Level 1"][0].messages[-1].content.endswith("Box it.")
    assert [m.role for m in source.test["add_1d"][0].messages] == ["user", "assistant", "user"]  # one solved example
    assert len(source.test["kk_3p"]) == 3 and len(source.train["kk_3p"]) == 30


def test_top_level_rewards_apply_to_sources_without_their_own():
    config = mixed_config()
    config.rewards = validate({"rewards": [{"name": "format"}]}).rewards
    sets = reward_sets(config)
    assert [s["name"] for s in sets["1:knights_knaves"]] == ["format"]
    assert [s["name"] for s in sets["2:countdown"]] == ["countdown"]


def test_draws_cover_each_distribution_before_repeating_and_never_touch_test():
    source = TaskSource(mixed_config())
    drawn = source.next_tasks(600)
    counts = Counter(t.distribution for t in drawn)
    assert set(counts) == set(source.distributions)
    test_ids = {t.task_id for tasks in source.test.values() for t in tasks}
    assert not test_ids & {t.task_id for t in drawn}
    # within a distribution, no task repeats before all of its tasks have been drawn
    for name in source.distributions:
        ids = [t.task_id for t in drawn if t.distribution == name]
        size = len(source.train[name])
        for start in range(0, len(ids) - size + 1, size):
            assert len(set(ids[start:start + size])) == size


def test_same_seed_same_tasks():
    a, b = TaskSource(mixed_config()), TaskSource(mixed_config())
    assert [t.model_dump() for t in a.next_tasks(50)] == [t.model_dump() for t in b.next_tasks(50)]
    assert [t.model_dump() for t in a.held_out()] == [t.model_dump() for t in b.held_out()]


def test_start_up_checks_name_the_source():
    config = validate({"env": {"sources": [{"type": "arithmetic"}, {"type": "file", "path": "/no/such/file.jsonl"}]}})
    with pytest.raises(SourceError, match=r"env.sources.1 \(file\).*no/such/file.jsonl"):
        check_sources(config)
    config = validate({"env": {"sources": [{"type": "knights_knaves", "distributions": ["kk_20p"]}]}})
    with pytest.raises(SourceError, match="kk_20p"):
        check_sources(config)


def test_two_files_with_the_same_distribution_name_are_refused():
    config = validate({"env": {"sources": [
        {"type": "file", "path": str(DATA / "gsm8k_sample.jsonl")},
        {"type": "file", "path": str(DATA / "gsm8k_sample.parquet")},
    ], "test_size": 2}})
    with pytest.raises(SourceError, match="already used by another source"):
        TaskSource(config)


def test_train_with_a_missing_data_file_fails_before_starting_anything(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(
        f"run: {{output_dir: {tmp_path / 'runs'}}}\nenv: {{sources: [{{type: file, path: {tmp_path / 'missing.jsonl'}}}]}}\n"
    )
    assert cli_main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_prompts_too_long_for_the_engine_are_dropped_with_a_warning(caplog):
    source = TaskSource(mixed_config())
    word_count = lambda tasks: [len(t.messages[-1].content.split()) for t in tasks]
    limit = sorted(word_count(source.train["kk_5p"]))[10]  # keeps the 11 shortest kk_5p prompts (and ties)
    source.drop_overlong(word_count, limit)
    assert all(n <= limit for n in word_count(source.train["kk_5p"]))
    assert 11 <= len(source.train["kk_5p"]) < 30
    assert "kk_5p: dropped" in caplog.text and "raise rollout.max_model_len" in caplog.text
    with pytest.raises(SourceError, match="every train task of add_1d has a prompt over 1 tokens"):
        source.drop_overlong(word_count, 1)
