import pytest

from envs import countdown as cd
from envs.prompts import PromptStyle
from rewards.countdown import countdown
from rewards.format import think_answer_format

STYLE = PromptStyle(system_prompt=cd.DEFAULT_SYSTEM_PROMPT, instruction=cd.DEFAULT_INSTRUCTION)


def key(task):
    return tuple(sorted(task.metadata["numbers"])), task.metadata["target"]


def test_distribution_names():
    assert cd.DISTRIBUTIONS == ["cd_2n", "cd_3n", "cd_4n", "cd_5n", "cd_6n"]
    assert set(cd.DEFAULT_DISTRIBUTIONS) <= set(cd.DISTRIBUTIONS)
    assert [cd.parse_distribution(name) for name in cd.DISTRIBUTIONS] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["cd_1n", "cd_7n", "cd_0n", "cd_4", "cd_xn", "add_2d", "", "cd_04n "])
def test_parse_distribution_rejects(name):
    with pytest.raises(ValueError, match="cd_2n, cd_3n, cd_4n, cd_5n, cd_6n"):
        cd.parse_distribution(name)


def test_reproducible_by_seed():
    first = cd.build_splits("cd_4n", 50, 10, seed=3, style=STYLE)
    again = cd.build_splits("cd_4n", 50, 10, seed=3, style=STYLE)
    other = cd.build_splits("cd_4n", 50, 10, seed=4, style=STYLE)
    assert first == again
    assert [key(t) for t in first[0]] != [key(t) for t in other[0]]
    # distributions draw from their own streams
    assert [key(t) for t in cd.build_splits("cd_3n", 50, 10, 3, STYLE)[0]] != [key(t) for t in first[0]]


@pytest.mark.parametrize("name", cd.DISTRIBUTIONS)
def test_splits_sizes_disjoint_and_well_formed(name):
    k = cd.parse_distribution(name)
    train, test = cd.build_splits(name, 300, 40, seed=0, style=STYLE)
    assert len(train) == 300 and len(test) == 40
    keys = [key(t) for t in train + test]
    assert len(set(keys)) == len(keys)  # distinct problems, so train and test share none
    assert [t.task_id for t in test] == [f"{name}/test/{i}" for i in range(40)]
    assert [t.task_id for t in train] == [f"{name}/train/{i}" for i in range(300)]
    for task in train + test:
        numbers, target = task.metadata["numbers"], task.metadata["target"]
        assert task.distribution == name
        assert len(numbers) == k and len(set(numbers)) == k
        assert all(type(n) is int and cd.NUMBER_RANGE[0] <= n <= cd.NUMBER_RANGE[1] for n in numbers)
        assert type(target) is int and 1 <= target <= cd.MAX_TARGET and target not in numbers
        assert task.answer == str(target)
        assert [m.role for m in task.messages] == ["system", "user"]
        assert str(numbers) in task.messages[-1].content and str(target) in task.messages[-1].content
        assert task.messages[-1].content.endswith(cd.DEFAULT_INSTRUCTION)


def test_every_witness_scores_correct():
    tasks = []
    for name in cd.DISTRIBUTIONS:
        train, test = cd.build_splits(name, 80, 20, seed=11, style=STYLE)
        tasks += train + test
    assert len(tasks) == 500
    for task in tasks:
        solution = task.metadata["solution"]
        # every number used exactly once, and the value is the target
        assert countdown(f"<answer>{solution}</answer>", task, require_all=True) == 1.0, (task.metadata)
        assert countdown(f"<think>ok</think><answer>{solution}</answer>", task) == 1.0


def test_wrong_expressions_score_wrong():
    task = cd.build_splits("cd_3n", 1, 1, seed=0, style=STYLE)[1][0]
    a, b, c = task.metadata["numbers"]
    target = task.metadata["target"]
    assert countdown(f"<answer>{a} + {b} + {c} + 1000</answer>", task) == 0.0  # wrong value
    assert countdown(f"<answer>{target}</answer>", task) == 0.0  # the target is never a given number
    assert countdown(f"<answer>{task.metadata['solution']} + {a} - {a}</answer>", task) == 0.0  # a used twice
    assert countdown("<answer>no idea</answer>", task) == 0.0


def test_default_format_reward_fits_the_instruction():
    task = cd.build_splits("cd_2n", 1, 1, seed=0, style=STYLE)[1][0]
    good = f"<think>try things</think>\n<answer>{task.metadata['solution']}</answer>"
    assert think_answer_format(good, task) == 1.0
    assert [r["name"] for r in cd.DEFAULT_REWARDS] == ["countdown", "format"]


def test_style_is_used():
    bare = PromptStyle()
    task = cd.build_splits("cd_2n", 1, 1, seed=0, style=bare)[0][0]
    assert [m.role for m in task.messages] == ["user"]
    assert "<answer>" not in task.messages[0].content


def test_few_shot_rejected():
    with pytest.raises(ValueError, match="few_shot is not supported for countdown"):
        cd.build_splits("cd_3n", 10, 2, seed=0, style=STYLE, few_shot=2)


def test_exhausted_space_is_an_error():
    with pytest.raises(ValueError, match="lower train_size"):
        cd.build_splits("cd_2n", 20000, 10, seed=0, style=STYLE)


@pytest.mark.parametrize("left, op, right, text", [
    ("a", "-", ("b", "+", "c"), "a - (b + c)"),
    (("a", "-", "b"), "-", "c", "a - b - c"),
    (("a", "+", "b"), "*", "c", "(a + b) * c"),
    ("a", "/", ("b", "*", "c"), "a / (b * c)"),
    (("a", "*", "b"), "/", "c", "a * b / c"),
    ("a", "+", ("b", "*", "c"), "a + b * c"),
])
def test_parentheses(left, op, right, text):
    def node(spec):
        if isinstance(spec, str):
            return cd.Node(1, spec)
        return cd.join(node(spec[0]), spec[1], node(spec[2]))

    assert cd.join(node(left), op, node(right)).text == text
