import math

import pytest

from rewards.countdown import countdown, extract_expression
from rewards.format import think_answer_format
from rewards.knights_knaves import knights_knaves, parse_assignment, solution_of
from rewards.length import cosine_length, length_penalty, overlong_penalty
from rl.wire import Task


def task(answer="", **metadata):
    return Task(task_id="t", distribution="d", messages=[{"role": "user", "content": "q"}], answer=answer, metadata=metadata)


# --- overlong_penalty: max_len 100, buffer 20, so the soft zone is (80, 100] ---------------------


@pytest.mark.parametrize("length, expected", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (95, -0.75), (100, -1.0), (101, -1.0), (5000, -1.0)])
def test_overlong_penalty(length, expected):
    assert overlong_penalty("x", task(), max_len=100, buffer=20, num_tokens=length) == pytest.approx(expected)


def test_length_rewards_need_num_tokens_and_valid_bounds():
    with pytest.raises(ValueError, match="needs num_tokens"):
        overlong_penalty("x", task(), max_len=100, buffer=20)
    with pytest.raises(ValueError, match="needs num_tokens"):
        cosine_length("x", task("1"), max_len=100)
    with pytest.raises(ValueError, match="needs num_tokens"):
        length_penalty("x", task())
    with pytest.raises(ValueError, match="0 < buffer <= max_len"):
        overlong_penalty("x", task(), max_len=100, buffer=0, num_tokens=1)
    with pytest.raises(ValueError, match="max_len > 0"):
        cosine_length("x", task("1"), max_len=0, num_tokens=1)


# --- cosine_length: paper defaults, correct 2 -> 1, wrong -10 -> 0, exceed -10 ----------------------

RIGHT, WRONG, NO_ANSWER = "so \\boxed{\\frac{1}{2}}", "so \\boxed{3}", "I don't know"


@pytest.mark.parametrize(
    "completion, length, expected",
    [
        (RIGHT, 0, 2.0),
        (RIGHT, 50, 1.5),
        (RIGHT, 100, 1.0),
        (RIGHT, 25, 1.0 + 0.5 * (1 + math.cos(math.pi / 4))),  # 1.8536
        (RIGHT, 101, -10.0),
        (WRONG, 0, -10.0),
        (WRONG, 50, -5.0),
        (WRONG, 100, 0.0),
        (WRONG, 101, -10.0),
        (NO_ANSWER, 0, -10.0),
    ],
)
def test_cosine_length(completion, length, expected):
    assert cosine_length(completion, task("0.5"), max_len=100, num_tokens=length) == pytest.approx(expected)


def test_cosine_length_custom_endpoints_and_answer_tag_source():
    reward = cosine_length("<answer>0.5</answer>", task("1/2"), max_len=10, r0_correct=1.0, rL_correct=0.0,
                           source="answer_tag", exceed=-3.0, num_tokens=5)
    assert reward == pytest.approx(0.5)
    assert cosine_length("<answer>0.5</answer>", task("1/2"), max_len=10, exceed=-3.0, num_tokens=11) == -3.0


# --- length_penalty -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, length, expected",
    [
        ({}, 0, 0.0),
        ({}, 1000, -1.0),
        ({"target": 200}, 150, 0.0),
        ({"target": 200}, 1200, -1.0),
        ({"coef": 0.01, "target": 10}, 30, 0.2),
    ],
)
def test_length_penalty(kwargs, length, expected):
    assert length_penalty("x", task(), num_tokens=length, **kwargs) == pytest.approx(expected)


# --- think_answer_format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>reason</think><answer>42</answer>", 1.0),
        ("  <think>a\nb</think>\n\n<answer>\n42\n</answer>\n  ", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("<think>a</think><answer>42</answer> and more", -1.0),  # trailing text
        ("<answer>42</answer><think>a</think>", -1.0),  # wrong order
        ("<think>a</think><answer>1</answer><answer>2</answer>", -1.0),  # answer twice
        ("<think>a</think><think>b</think><answer>2</answer>", -1.0),  # think twice
        ("<think>a <think> b</think><answer>2</answer>", -1.0),  # nested opening tag
        ("<think>a</think>", -1.0),  # missing answer
        ("<answer>42</answer>", -1.0),  # missing think
        ("reason</think><answer>42</answer>", -1.0),  # missing <think>
        ("preamble <think>a</think><answer>42</answer>", -1.0),  # text before <think>
        ("<think>a</think> words <answer>42</answer>", -1.0),  # text between the blocks
    ],
)
def test_think_answer_format(completion, expected):
    assert think_answer_format(completion, task()) == expected


def test_think_answer_format_custom_pattern_and_values():
    prefilled = r".*?</think>\s*<answer>.*?</answer>\s*"
    assert think_answer_format("reason</think><answer>4</answer>", task(), pattern=prefilled) == 1.0
    assert think_answer_format("reason</think><answer>4</answer>", task(), reward_pass=0.5, reward_fail=0.0) == 0.0
    assert think_answer_format("<think>a</think><answer>4</answer>", task(), reward_pass=0.5) == 0.5


# --- knights_knaves -------------------------------------------------------------------------------

KK = task(solution={"Zoey": "knight", "Oliver": "knave"})


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>t</think><answer>(1) Zoey is a knight\n(2) Oliver is a knave</answer>", 2.0),
        ("<answer>Zoey is a knight, Oliver is a knave</answer>", 2.0),
        ("<answer>OLIVER IS A KNAVE and zoey is a Knight.</answer>", 2.0),
        ("Zoey is a knight, Oliver is a knave", 2.0),  # no answer tag: the whole completion
        ("If Zoey is a knave... <answer>Zoey is a knight, Oliver is a knave</answer>", 2.0),  # only the tag counts
        ("<answer>(1) Zoey is a knave\n(2) Oliver is a knave</answer>", -1.5),
        ("<answer>(1) Zoey is a knave\n(2) Oliver is a knight</answer>", -1.5),
        ("<answer>(1) Zoey is a knight</answer>", -2.0),  # Oliver missing
        ("<answer>Zoey is a knight, Zoey is a knave, Oliver is a knave</answer>", -2.0),  # contradictory
        ("Suppose Zoey is a knave. Then ... so Zoey is a knight and Oliver is a knave", -2.0),  # contradictory, no tag
        ("<answer>Zoey: knight, Oliver: knave</answer>", -2.0),  # unsupported phrasing
        ("", -2.0),
    ],
)
def test_knights_knaves(completion, expected):
    assert knights_knaves(completion, KK) == expected


def test_parse_assignment():
    assert parse_assignment("(1) Zoey is a knight\n(2) Oliver is a knave", ["Zoey", "Oliver"]) == {"Zoey": True, "Oliver": False}
    assert parse_assignment("Zoeyx is a knight, Oliver is a knave", ["Zoey", "Oliver"]) is None  # whole words only
    assert parse_assignment("Mary Ann is a knave", ["Mary Ann"]) == {"Mary Ann": False}


def test_knights_knaves_solution_from_answer_and_bad_tasks():
    from_answer = task("(1) Zoey is a knight\n(2) Oliver Twist is a knave")
    assert solution_of(from_answer) == {"Zoey": True, "Oliver Twist": False}
    assert knights_knaves("<answer>Zoey is a knight, Oliver Twist is a knave</answer>", from_answer, correct=1.0) == 1.0
    assert knights_knaves("<answer>Zoey is a knight, Oliver Twist is a knight</answer>", from_answer, wrong=0.0) == 0.0
    with pytest.raises(ValueError, match="knight'/'knave'"):
        solution_of(task(solution={"Zoey": "liar"}))
    with pytest.raises(ValueError, match="does not read as"):
        solution_of(task("Zoey: knight"))


# --- countdown: numbers [3, 4, 6, 6], target 24 ----------------------------------------------------

CD = task(numbers=[3, 4, 6, 6], target=24)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>(6 - 3) * 4 + 6 + 6</answer>", 0.0),  # 6 used three times, given twice
        ("<answer>6 * 4</answer>", 1.0),
        ("<answer>(6 + 6) * (4 - 3) * 2</answer>", 0.0),  # 2 not given
        ("<answer>6 * 3 + 6</answer>", 1.0),
        ("<answer>6 + 6 + 4 * 3</answer>", 1.0),
        ("<answer>6 * 3 + 6 * 1</answer>", 0.0),  # 1 not given
        ("<answer>6 * 4 * 3 / 3</answer>", 0.0),  # 3 used twice
        ("<answer>6 + 4 * 3</answer>", 0.0),  # 18: wrong value
        ("<answer>6 * 4 + 3 - 3</answer>", 0.0),  # 3 reused
        ("<answer>6 / 4 * 4 * 3 + 6</answer>", 0.0),  # 4 reused
        ("<answer>6 / 4 * 6 * 4 - 3 * 4</answer>", 0.0),  # 4 reused
        ("<answer>6 * 4 = 24</answer>", 1.0),  # trailing result ignored
        ("<answer>6 + 4 = 24</answer>", 0.0),  # the left side is what counts
        ("<answer>$6 \\times 4$</answer>", 1.0),
        ("<answer>6 \\times 6 - 4 \\cdot 3</answer>", 1.0),
        ("<answer>(6 \\div 3) * (6 + 6)</answer>", 0.0),  # 6 three times
        ("reasoning...\n6 * 4\n", 1.0),  # last line
        ("so \\boxed{6 * 4} is it", 1.0),  # last boxed
        ("<answer>-3 + 6 * 4 + 3</answer>", 0.0),  # 3 twice: unary minus does not make a new number
        ("<answer>-(3 - 6 * 4) + 3</answer>", 0.0),
        ("<answer>6 / (4 - 4)</answer>", 0.0),  # 4 twice
        ("<answer>6 / (6 - 6) + 4</answer>", 0.0),  # division by zero
        ("<answer>__import__('os')</answer>", 0.0),
        ("<answer>2**3</answer>", 0.0),
        ("<answer>x * 4</answer>", 0.0),
    ],
)
def test_countdown(completion, expected):
    assert countdown(completion, CD) == expected


def test_countdown_exact_fractions():
    assert countdown("<answer>6 / 4 * 4</answer>", task(numbers=[6, 4, 4], target=6)) == 1.0
    assert countdown("<answer>(1 / 3) * 3</answer>", task(numbers=[1, 3, 3], target=1)) == 1.0
    assert countdown("<answer>8 / (3 - 8 / 3)</answer>", task(numbers=[8, 3, 8, 3], target=24)) == 1.0
    assert countdown("<answer>8 ÷ (3 - 8 \\div 3)</answer>", task(numbers=[8, 3, 8, 3], target=24)) == 1.0
    assert countdown("<answer>7 / 2</answer>", task(numbers=[7, 2], target=3)) == 0.0  # no integer division


VALUES = dict(correct=1.0, wrong=-0.5, unparsable=-1.0)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<answer>6 * 4</answer>", 1.0),
        ("<answer>6 + 4</answer>", -0.5),  # wrong value
        ("<answer>6 * 4 * 1</answer>", -0.5),  # number not given
        ("<answer>6 * 6 * 6</answer>", -0.5),  # number reused
        ("<answer>6 / (6 - 6)</answer>", -0.5),  # division by zero
        ("<answer>__import__('os')</answer>", -1.0),
        ("<answer>__import__('os').system('echo hi')</answer>", -1.0),
        ("<answer>2**3</answer>", -1.0),
        ("<answer>6 ** 4</answer>", -1.0),
        ("<answer>x * 4</answer>", -1.0),
        ("<answer>abs(-24)</answer>", -1.0),
        ("<answer>(6).real * 4</answer>", -1.0),
        ("<answer>6.0 * 4</answer>", -1.0),
        ("<answer>0x6 * 4</answer>", -1.0),
        ("<answer>6 // 1 * 4</answer>", -1.0),
        ("<answer>6 % 4</answer>", -1.0),
        ("<answer>6 * (4</answer>", -1.0),
        ("<answer>" + "(" * 150 + "6" + ")" * 150 + "</answer>", -1.0),  # longer than 200 characters
        ("<answer></answer>", -1.0),
        ("", -1.0),
    ],
)
def test_countdown_statuses(completion, expected):
    assert countdown(completion, CD, **VALUES) == expected


def test_countdown_deep_nesting_is_unparsable_not_a_crash():
    deep = "-" * 150 + "6"  # 150 nested unary minus, within the character limit
    assert countdown(f"<answer>{deep}</answer>", task(numbers=[6], target=6), unparsable=-1.0) == -1.0


def test_countdown_require_all_and_bad_tasks():
    assert countdown("<answer>6 * 4</answer>", CD, require_all=True) == 0.0
    assert countdown("<answer>(6 + 6) * (4 - 3)</answer>", task(numbers=[3, 4, 6, 6], target=12), require_all=True) == 1.0
    assert extract_expression("<answer> 1 + 2 = 3 </answer>") == "1 + 2"
    with pytest.raises(ValueError, match="metadata\\['numbers'\\]"):
        countdown("<answer>1</answer>", task(target=1))


def test_cosine_gives_exceed_to_a_truncated_generation():
    from rewards.length import cosine_length
    from rl.wire import Task

    task = Task(task_id="t", distribution="d", messages=[{"role": "user", "content": "q"}], answer="3")
    assert cosine_length("\\boxed{3}", task, max_len=100, num_tokens=10, finish_reason="stop") > 1.0
    assert cosine_length("\\boxed{3}", task, max_len=100, num_tokens=10, finish_reason="length") == -10.0
