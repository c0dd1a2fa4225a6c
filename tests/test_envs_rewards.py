import pytest

from envs.arithmetic import build_splits, parse_distribution
from envs.prompts import PromptStyle
from rewards.boxed import boxed_answer, boxed_format, extract_boxed
from rewards.registry import RewardConfigError, build_reward
from rl.wire import Task


def task(answer):
    return Task(task_id="t", distribution="add_1d", messages=[{"role": "user", "content": "q"}], answer=answer)


@pytest.mark.parametrize("name", ["add_1d", "add_2d", "sub_3d", "mul_2d"])
def test_splits_are_deterministic_disjoint_and_correct(name):
    train, test = build_splits(name, 60, 20, seed=3, style=PromptStyle(instruction="Box it."))
    again_train, again_test = build_splits(name, 60, 20, seed=3, style=PromptStyle(instruction="Box it."))
    assert [t.model_dump() for t in train] == [t.model_dump() for t in again_train]
    assert [t.model_dump() for t in test] == [t.model_dump() for t in again_test]
    questions = lambda tasks: {t.messages[-1].content for t in tasks}
    assert not questions(train) & questions(test)
    assert len(test) == 20 and len(questions(test)) == 20
    for t in train[:10] + test[:10]:
        a, b, op = t.metadata["a"], t.metadata["b"], t.metadata["op"]
        assert int(t.answer) == {"add": a + b, "sub": a - b, "mul": a * b}[op]
        assert t.messages[-1].content.endswith("Box it.")


def test_other_seed_gives_other_tasks_and_bad_names_fail():
    assert build_splits("add_2d", 20, 5, 0, PromptStyle())[1][0].answer != build_splits("add_2d", 20, 5, 1, PromptStyle())[1][0].answer or \
        build_splits("add_2d", 20, 5, 0, PromptStyle())[1][1].answer != build_splits("add_2d", 20, 5, 1, PromptStyle())[1][1].answer
    with pytest.raises(ValueError, match="unknown arithmetic distribution"):
        parse_distribution("div_2d")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("no box here", None),
        ("\\boxed{12", None),
    ],
)
def test_extract_boxed_takes_last_with_nested_braces(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, answer, correct, formatted",
    [
        ("12 + 7 = 19, so \\boxed{19}", "19", 1.0, 1.0),
        ("\\boxed{19.0}", "19", 1.0, 1.0),
        ("\\boxed{1,234}", "1234", 1.0, 1.0),
        ("\\boxed{-5}", "-5", 1.0, 1.0),
        ("\\boxed{20}", "19", 0.0, 1.0),
        ("the answer is 19", "19", 0.0, 0.0),
        ("\\boxed{nineteen}", "19", 0.0, 0.0),
        ("\\boxed{18} no wait \\boxed{19}", "19", 1.0, 0.0),
    ],
)
def test_boxed_rewards(text, answer, correct, formatted):
    assert boxed_answer(text, task(answer)) == correct
    assert boxed_format(text, task(answer)) == formatted


def test_weighted_reward_sums_components_and_unknown_names_fail():
    reward = build_reward([{"name": "boxed_answer", "weight": 1.0}, {"name": "boxed_format", "weight": 0.25}])
    total, parts = reward("\\boxed{19}", task("19"))
    assert total == 1.25 and parts == {"boxed_answer": 1.0, "boxed_format": 1.0}
    total, parts = reward("\\boxed{18}", task("19"))
    assert total == 0.25
    with pytest.raises(RewardConfigError, match="did you mean 'boxed_format'"):
        build_reward([{"name": "boxed_fromat"}])


def test_few_shot_turns_are_solved_training_problems_never_test_ones():
    train, test = build_splits("add_2d", 50, 10, seed=0, style=PromptStyle(instruction="Box it."), few_shot=2)
    shots = test[0].messages[:-1]
    assert [m.role for m in shots] == ["user", "assistant", "user", "assistant"]
    assert all(t.messages[:-1] == shots for t in train + test), "every task carries the same demonstrations"
    test_questions = {t.messages[-1].content for t in test}
    assert not {m.content for m in shots if m.role == "user"} & test_questions
    for question, answer in zip(shots[0::2], shots[1::2]):
        a, _, b = question.content.removeprefix("What is ").split("?")[0].partition(" + ")
        assert answer.content == f"{a} + {b} = \\boxed{{{int(a) + int(b)}}}"
        assert boxed_answer(answer.content, task(str(int(a) + int(b)))) == 1.0


def test_reward_parameters_are_checked_against_the_function(tmp_path):
    with pytest.raises(RewardConfigError, match="has no parameter 'wieght': did you mean 'weight'"):
        build_reward([{"name": "boxed_answer", "wieght": 2}])
    (tmp_path / "mine.py").write_text(
        "def scaled(completion, task, *, scale=1.0):\n    return scale * len(completion)\n"
        "def no_task(completion):\n    return 0.0\n"
    )
    reward = build_reward([{"name": f"{tmp_path}/mine.py:scaled", "scale": 2.0}])
    assert reward("abc", task("1")) == (6.0, {"scaled": 6.0})
    with pytest.raises(RewardConfigError, match="has no parameter 'scal': did you mean 'scale'"):
        build_reward([{"name": f"{tmp_path}/mine.py:scaled", "scal": 2.0}])
    with pytest.raises(RewardConfigError, match="must be callable as"):
        build_reward([{"name": f"{tmp_path}/mine.py:no_task"}])
    with pytest.raises(RewardConfigError, match="has no function 'missing'"):
        build_reward([{"name": f"{tmp_path}/mine.py:missing"}])
    with pytest.raises(RewardConfigError, match="listed twice"):
        build_reward([{"name": "boxed_answer"}, {"name": "boxed_answer"}])
