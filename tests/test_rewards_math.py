import threading

import pytest

from rewards.math_answer import MathCheck, check_math, extract_answer, math_answer, normalize
from rl.wire import Task


def task(answer):
    return Task(task_id="t", distribution="math", messages=[{"role": "user", "content": "q"}], answer=answer)


# (boxed prediction, reference, equivalent?)
EQUIVALENCE = [
    # integers
    ("3", "3", True),
    ("-5", "-5", True),
    ("+5", "5", True),
    ("3", "4", False),
    ("-3", "3", False),
    ("0", "-0", True),
    # decimals
    ("3.0", "3", True),
    ("12.50", "12.5", True),
    ("0.1", "0.10", True),
    ("3.14", "3.15", False),
    ("1.5", "15", False),
    # fractions
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac12", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\tfrac{3}{4}", "\\frac{6}{8}", True),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
    ("\\frac{3}{2}", "1.5", True),
    ("\\frac{1}{3}", "0.333333", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("\\frac{1}{2}.", "\\frac{1}{2}", True),  # trailing full stop dropped by normalize
    # LaTeX: roots, pi, powers
    ("\\sqrt{2}", "2^{1/2}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt{18}", "3\\sqrt{2}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}", False),
    ("\\sqrt{2}", "2", False),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("0.5\\pi", "\\frac{\\pi}{2}", True),
    ("\\pi", "2\\pi", False),
    ("\\pi", "3.14159", False),
    ("10^{3}", "1000", True),
    ("x^2+1", "1+x^2", True),
    ("x^2+1", "x^2+2", False),
    # percentages (math-verify accepts both readings: 50% = 50 and 50% = 0.5)
    ("50\\%", "50", True),
    ("50\\%", "0.5", True),
    ("50%", "\\frac{1}{2}", True),
    ("10", "10\\%", True),
    ("0.1", "10\\%", True),
    ("1.5\\%", "0.015", True),
    ("50\\%", "0.6", False),
    ("10\\%", "0.01", False),
    # sets
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}", True),
    ("1,2", "\\{2,1\\}", True),
    ("\\{1,2\\}", "\\{1,3\\}", False),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    # intervals
    ("(1,2]", "(1,2]", True),
    ("\\left( 1, 2 \\right]", "(1,2]", True),
    ("[0,\\infty)", "[0, \\infty)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty) \\cup (-\\infty,2)", True),
    ("(-\\infty, 3]", "x \\le 3", True),  # not symmetric: gold inequality, predicted interval
    ("(1,2]", "[1,2]", False),
    ("(1,2)", "(1,3)", False),
    # equations: `x = 3` against `3`
    ("x = 3", "3", True),
    ("x=3", "3", True),
    ("3", "x = 3", True),
    ("x = \\frac{1}{2}", "0.5", True),
    ("x = 4", "3", False),
    ("x \\in [1,2]", "[1,2]", True),
    # thousands separators
    ("1,234", "1234", True),
    ("1{,}234", "1234", True),
    ("1\\,234", "1234", True),  # normalize: math-verify alone reads 1\,234 as 235
    ("1\\!234\\!567", "1234567", True),  # normalize
    ("1,234,567", "1234567", True),
    ("12,345.6", "12345.6", True),
    ("1,234", "1235", False),
    ("1\\,234", "235", False),
    # text and units around the answer
    ("5 \\text{ cm}", "5", True),
    ("\\$1,000", "1000", True),
    ("90^\\circ", "90", True),
    ("\\text{(A)}", "A", True),
    ("\\text{A}", "B", False),
]


@pytest.mark.parametrize("prediction, reference, equal", EQUIVALENCE)
def test_math_equivalence_table(prediction, reference, equal):
    check = check_math(f"Reasoning... so the answer is \\boxed{{{prediction}}}.", reference)
    assert check == MathCheck("correct" if equal else "wrong", prediction)


def test_table_is_large_and_covers_both_outcomes():
    assert len(EQUIVALENCE) >= 60
    assert sum(equal for *_, equal in EQUIVALENCE) >= 30 and sum(not equal for *_, equal in EQUIVALENCE) >= 20


@pytest.mark.parametrize(
    "completion, status, extracted",
    [
        ("the answer is 42", "missing", None),
        ("\\boxed{42", "missing", None),
        ("\\boxed{}", "unparsable", ""),
        ("\\boxed{ }", "unparsable", " "),
        ("\\boxed{?}", "unparsable", "?"),
        ("\\boxed{\\frac{}{}}", "unparsable", "\\frac{}{}"),
        ("\\boxed{41}", "wrong", "41"),
        ("\\boxed{1} first, then \\boxed{42}", "correct", "42"),
        ("\\boxed{42} first, then \\boxed{1}", "wrong", "1"),
    ],
)
def test_missing_unparsable_wrong_are_distinct(completion, status, extracted):
    assert check_math(completion, "42") == MathCheck(status, extracted)


@pytest.mark.parametrize(
    "completion, status",
    [
        ("<think>t</think><answer>42</answer>", "correct"),
        ("<answer>\\frac{84}{2}</answer>", "correct"),
        ("<answer>$42$</answer>", "correct"),
        ("<answer>\\boxed{42}</answer>", "correct"),
        ("<answer>1</answer> no, <answer>\n42\n</answer>", "correct"),
        ("<answer>42</answer> no, <answer>43</answer>", "wrong"),
        ("\\boxed{42}", "missing"),
        ("<answer>42", "missing"),
        ("<answer></answer>", "unparsable"),
    ],
)
def test_answer_tag_source(completion, status):
    assert check_math(completion, "42", source="answer_tag").status == status


def test_extract_answer():
    assert extract_answer("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("<answer>1</answer><answer>x = 2</answer>", "answer_tag") == "x = 2"
    with pytest.raises(ValueError, match="unknown answer source"):
        extract_answer("x", "last_line")


def test_normalize_only_touches_digit_groups_of_three():
    assert normalize(" 1\\,234\\,567 ") == "1234567"
    assert normalize("1\\,23") == "1\\,23"
    assert normalize("a\\,b") == "a\\,b"
    assert normalize("5.") == "5"


def test_math_answer_maps_each_status_to_its_value():
    values = dict(correct=3.0, wrong=-1.0, missing=-2.0, unparsable=-3.0)
    assert math_answer("\\boxed{\\frac{1}{2}}", task("0.5"), **values) == 3.0
    assert math_answer("\\boxed{0.4}", task("0.5"), **values) == -1.0
    assert math_answer("0.5", task("0.5"), **values) == -2.0
    assert math_answer("\\boxed{?}", task("0.5"), **values) == -3.0
    assert math_answer("<answer>1/2</answer>", task("0.5"), source="answer_tag") == 1.0
    assert math_answer("\\boxed{1/2}", task("0.5")) == 1.0 and math_answer("\\boxed{2}", task("0.5")) == 0.0


def test_unparsable_reference_is_a_loud_error():
    with pytest.raises(ValueError, match="reference answer"):
        check_math("\\boxed{1}", "")


def test_works_outside_the_main_thread_without_signal_alarm():
    results = []
    thread = threading.Thread(target=lambda: results.append(check_math("\\boxed{\\frac{1}{2}}", "0.5").status))
    thread.start()
    thread.join()
    assert results == ["correct"]
