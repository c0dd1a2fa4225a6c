"""The label-free surrogate rewards (Xin et al. 2025) on hand-worked values."""

import pytest

from rewards.registry import RewardConfigError, build_reward
from rewards.surrogate import format_length, length_score, surrogate_format, surrogate_length
from rl.wire import ChatMessage, Task

NO_ANSWER = Task(task_id="t", distribution="d", messages=[ChatMessage(role="user", content="What is 3 + 4?")], answer="")


# p = 0.5: x = 0 -> 1 - (1 - 0)^2 = 0; x = 0.25 -> 1 - 0.5^2 = 0.75; x = 0.5 -> 1;
# x = 0.75 -> 1 - 2 (0.25 / 0.5)^2 = 0.5; x = 1 -> 1 - 2 (0.5 / 0.5)^2 = -1.
@pytest.mark.parametrize("x, expected", [(0.0, 0.0), (0.25, 0.75), (0.5, 1.0), (0.75, 0.5), (1.0, -1.0)])
def test_length_curve_at_the_paper_points(x, expected):
    assert length_score(x, 0.5) == pytest.approx(expected)


def test_length_curve_with_another_peak():
    # p = 0.25: x = 0.125 -> 0.75; x = 0.5 -> 1 - 2 (0.25 / 0.75)^2 = 7/9; x = 1 -> -1
    assert length_score(0.125, 0.25) == pytest.approx(0.75)
    assert length_score(0.25, 0.25) == pytest.approx(1.0)
    assert length_score(0.5, 0.25) == pytest.approx(7 / 9)
    assert length_score(1.0, 0.25) == pytest.approx(-1.0)


def test_length_is_clipped_to_the_curve_floor_and_p_is_checked():
    assert length_score(1.5) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="0 < p < 1"):
        length_score(0.5, 1.0)


def test_length_reward_uses_the_request_budget_unless_max_tokens_is_set():
    assert surrogate_length("", NO_ANSWER, num_tokens=24, max_new_tokens=96) == pytest.approx(0.75)  # x = 0.25
    assert surrogate_length("", NO_ANSWER, max_tokens=48, num_tokens=36, max_new_tokens=96) == pytest.approx(0.5)  # x = 0.75
    assert surrogate_length("", NO_ANSWER, max_tokens=48, num_tokens=60, max_new_tokens=96) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="max_tokens"):
        surrogate_length("", NO_ANSWER, num_tokens=10)
    with pytest.raises(ValueError, match="num_tokens"):
        surrogate_length("", NO_ANSWER, max_new_tokens=10)


@pytest.mark.parametrize("completion, expected", [
    ("<think>3 + 4 = 7</think> So \\boxed{7}.", 1.0),
    ("<think>3 + 4 = 7</think> So seven.", 0.5),
    ("3 + 4 = \\boxed{7}", 0.5),
    ("<think>unclosed, then \\boxed{\\frac{1}{2}}", 0.5),
    ("</think> closing tag first <think> \\boxed{}", 0.0),  # no block, and an empty box parses to nothing
    ("\\boxed{?}", 0.0),  # math-verify finds no mathematical object in it (in "seven" it finds s*e*v*e*n)
])
def test_format_is_half_think_block_half_parsable_answer(completion, expected):
    assert surrogate_format(completion, NO_ANSWER) == pytest.approx(expected)


def test_format_tags_and_answer_source_are_configurable():
    completion = "<reasoning>...</reasoning><answer>7</answer>"
    assert surrogate_format(completion, NO_ANSWER) == 0.0
    assert surrogate_format(completion, NO_ANSWER, think_open="<reasoning>", think_close="</reasoning>", source="answer_tag") == 1.0


def total(parts: dict[str, float]) -> float:
    return sum(parts.values())


def test_format_length_with_an_extracted_answer_is_format_plus_length():
    # x = 48 / 96 = 0.5 -> length 1; format 0.5 + 0.5
    assert total(format_length("<think>a</think> \\boxed{7}", NO_ANSWER, num_tokens=48, max_new_tokens=96)) == pytest.approx(2.0)
    # no think block: 0.5 + length(0.25) = 0.5 + 0.75
    assert total(format_length("\\boxed{7}", NO_ANSWER, num_tokens=24, max_new_tokens=96)) == pytest.approx(1.25)
    # extracted but unparsable: format 0.5 (think only) + length 1; still the first branch
    parts = format_length("<think>a</think> \\boxed{}", NO_ANSWER, num_tokens=48, max_new_tokens=96)
    assert parts == {"format": pytest.approx(0.5), "length": pytest.approx(1.0)}


def test_format_length_without_an_answer_is_min_zero_length():
    # x = 0.75 -> length 0.5 > 0 -> 0, and the think block's 0.5 does not count
    assert format_length("<think>a</think> seven", NO_ANSWER, num_tokens=72, max_new_tokens=96) == {"format": 0.0, "length": 0.0}
    # x = 1 -> length -1 stays
    assert total(format_length("<think>a</think> seven", NO_ANSWER, num_tokens=96, max_new_tokens=96)) == pytest.approx(-1.0)


def test_builtins_by_name_take_their_parameters_and_the_worker_context():
    reward = build_reward([{"name": "format_length", "p": 0.25}, {"name": "surrogate_length", "max_tokens": 48},
                           {"name": "surrogate_format", "weight": 0.0}])
    total_reward, logged = reward("<think>a</think> \\boxed{7}", NO_ANSWER, num_tokens=24, max_new_tokens=96)
    # format_length: x = 0.25 = p -> 1, + format 1; surrogate_length: x = 0.5 of 48 -> 1
    assert logged["format_length"] == pytest.approx(2.0) and logged["format_length.length"] == pytest.approx(1.0)
    assert logged["surrogate_length"] == pytest.approx(1.0) and logged["surrogate_format"] == pytest.approx(1.0)
    assert total_reward == pytest.approx(3.0)
    with pytest.raises(RewardConfigError, match="no parameter 'peak'"):
        build_reward([{"name": "format_length", "peak": 0.3}])
