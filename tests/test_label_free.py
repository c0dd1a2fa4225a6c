"""Label-free training (env.label_free): the config check, and training tasks reaching the workers without their answer."""

import ast
import inspect
import textwrap

import pytest

from envs.source import TaskSource, check_run_inputs, reward_sets
from learner.collect import submit_step
from learner.evaluate import evaluate
from rewards.registry import BUILTINS, lookup
from rl.config import ConfigError, validate
from rl.label_free import ANSWER_READING_REWARDS
from tests.test_coordinator import coordinator  # noqa: F401 - the fixture: a real Coordinator and fake workers on real sockets

LABEL_FREE = {
    "env": {"label_free": True, "sources": [{"type": "arithmetic", "distributions": ["add_1d"], "few_shot": 1}],
            "train_size": 20, "test_size": 4},
    "rewards": [{"name": "format_length"}],
    "rollout": {"prompts_per_step": 4, "samples_per_prompt": 2},
}


def label_free(**changes):
    return validate({**LABEL_FREE, **changes})


@pytest.mark.parametrize("rewards, named", [
    ([{"name": "format_length"}, {"name": "boxed_answer"}], "'boxed_answer' in `rewards` reads the reference answer"),
    ([{"name": "rewards.math_answer:math_answer"}], "'rewards.math_answer:math_answer' in `rewards` reads"),
    ([{"name": "cosine_length", "max_len": 64}], "'cosine_length'"),
    ([{"name": "tests/rewards_for_tests.py:shorter_is_better", "correctness": True}], "judges correctness"),
])
def test_a_label_free_run_with_an_answer_reading_reward_is_refused_at_load(rewards, named):
    with pytest.raises(ConfigError, match="env.label_free: reward ") as err:
        label_free(rewards=rewards)
    assert named in str(err.value) and "format_length" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_label_free_source_left_on_its_default_rewards_is_refused():
    raw = {**LABEL_FREE, "rewards": None}
    with pytest.raises(ConfigError, match=r"env.sources.0 \(arithmetic\) would train on its default rewards"):
        validate(raw)
    source_own = {**LABEL_FREE["env"], "sources": [{"type": "countdown", "rewards": [{"name": "countdown"}]}]}
    with pytest.raises(ConfigError, match="'countdown' in `env.sources.0.rewards`"):
        validate({**LABEL_FREE, "env": source_own})


def test_the_answer_reading_list_is_every_builtin_that_uses_its_task():
    """A built-in that touches its `task` argument at all is listed (and with its import path), and no other is."""
    def uses_task(fn) -> bool:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        body = tree.body[0].body
        body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body  # docstring
        return any(isinstance(node, ast.Name) and node.id in ("task", "tasks") for stmt in body for node in ast.walk(stmt))

    reading = {name for name in BUILTINS if uses_task(lookup(name))}
    assert reading == set(ANSWER_READING_REWARDS)
    assert all(BUILTINS[name] == target for name, target in ANSWER_READING_REWARDS.items())


def test_training_tasks_lose_answer_and_metadata_held_out_tasks_keep_them_and_their_scorer():
    config = label_free()
    source = TaskSource(config)
    train = source.train["add_1d"]
    assert train and all(t.answer == "" and t.metadata == {} for t in train)
    # the one training problem shown solved as the few-shot example is not trained on (its prompt shows its answer)
    assert len(train) == 20 - 1 and all(t.messages[-1].content != t.messages[0].content for t in train)
    assert all(t.answer and t.metadata["op"] == "add" for t in source.test["add_1d"])
    sets = reward_sets(config)
    assert sets["0:arithmetic"] == [{"name": "format_length", "weight": 1.0, "on_error": 0.0}]
    assert [s["name"] for s in sets["0:arithmetic:eval"]] == ["boxed_answer", "boxed_format"]  # the source's default
    assert {t.reward_set for t in train} == {"0:arithmetic"}
    assert {t.reward_set for t in source.test["add_1d"]} == {"0:arithmetic:eval"}
    # the solved example is a fixed demonstration in the prompt; the task's own answer is gone
    assert train[0].messages[1].role == "assistant" and "\\boxed{" in train[0].messages[1].content
    check_run_inputs(config)


def test_a_correctness_curriculum_is_refused_in_a_label_free_run():
    from envs.source import SourceError

    with pytest.raises(SourceError, match="label-free training judges no correctness, so use signal: reward"):
        check_run_inputs(label_free(curriculum={"ucb": {"signal": "correctness"}}))


def test_eval_rewards_replace_the_default_and_a_labelled_run_keeps_one_set():
    config = label_free(eval={"rewards": [{"name": "math_answer"}]})
    assert [s["name"] for s in reward_sets(config)["0:arithmetic:eval"]] == ["math_answer"]
    labelled = validate({**LABEL_FREE, "env": {**LABEL_FREE["env"], "label_free": False}, "rewards": [{"name": "boxed_answer"}]})
    source = TaskSource(labelled)
    assert list(reward_sets(labelled)) == ["0:arithmetic"]
    assert all(t.answer for t in source.train["add_1d"]) and {t.reward_set for t in source.test["add_1d"]} == {"0:arithmetic"}


def test_the_tasks_messages_workers_receive_carry_no_answer_in_training_and_the_answer_in_evaluation(coordinator, tmp_path):  # noqa: F811
    """What the learner's own code sends (learner.collect.submit_step, learner.evaluate.evaluate), as the
    worker decodes it from the socket."""
    coord, start = coordinator
    worker = start("w")
    coord.wait_for_workers(1, timeout_s=5)
    config = label_free()
    source = TaskSource(config)
    coord.collect(submit_step(coord, source, config, step=1, version=0).job)
    evaluate(coord, source, config, 0, tmp_path / "eval.json")
    train = [task for r in worker.requests if r.purpose == "train" for task in r.tasks]
    held_out = [task for r in worker.requests if r.purpose == "eval" for task in r.tasks]
    assert len(train) == 4 and all(t.answer == "" and t.metadata == {} for t in train)
    assert {t.reward_set for t in train} == {"0:arithmetic"}
    expected = {f"add_1d/test/{i}": str(t.metadata["a"] + t.metadata["b"]) for i, t in enumerate(source.test["add_1d"])}
    assert len(held_out) == 4 and {t.task_id: t.answer for t in held_out} == expected
    assert {t.reward_set for t in held_out} == {"0:arithmetic:eval"}


def test_the_label_free_config_shows_the_format_its_reward_asks_for():
    from rewards.surrogate import surrogate_format
    from rl.config import load_config
    from tests.test_e2e import REPO

    config = load_config(REPO / "configs" / "label_free.yaml", ["env.train_size=20", "env.test_size=4"])
    check_run_inputs(config)
    source = TaskSource(config)
    task = source.train["add_2d"][0]
    demos = [m.content for m in task.messages if m.role == "assistant"]
    assert len(demos) == 2 and all(d.startswith("<think>") for d in demos)
    assert all(surrogate_format(d, task) == 1.0 for d in demos)  # a demonstration earns the whole format score
    assert "<think>" in task.messages[-1].content and "\\boxed{}" in task.messages[-1].content
    assert task.answer == "" and source.test["add_2d"][0].answer
