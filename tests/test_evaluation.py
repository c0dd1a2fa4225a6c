"""Evaluation summaries: pass@k against hand-worked values, mean@k, per-distribution grouping."""

import pytest

from rl.evaluation import (
    comparison_table,
    evaluation_table,
    flat_metrics,
    pass_at_k,
    summarize_eval,
)
from rl.wire import SampleMeta


def meta(task_id, dist, correct, reward=1.0, length=10, finish="stop"):
    return SampleMeta(
        sample_id=f"{task_id}-{reward}-{length}", task_id=task_id, distribution=dist, prompt_len=5, completion_len=length,
        reward=reward, reward_components={}, correct=correct, finish_reason=finish, policy_version=0, worker_id=0, text="x",
    )


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 0, 1, 0.0),
        (4, 4, 1, 1.0),
        (4, 1, 1, 0.25),  # pass@1 is the share of correct samples
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 1, 4, 1.0),  # k = n: any correct
        (4, 2, 3, 1.0),  # n - c < k
    ],
)
def test_pass_at_k_matches_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_summary_per_distribution_and_overall():
    metas = [
        # a: task a1 has 1 of 2 right, a2 has 0 of 2 -> mean@2 = 0.25, pass@2 = 0.5
        meta("a1", "a", True, reward=2.0, length=10), meta("a1", "a", False, reward=0.0, length=30, finish="length"),
        meta("a2", "a", False, reward=0.0, length=20), meta("a2", "a", False, reward=0.0, length=20),
        # b: both right on its one task
        meta("b1", "b", True, length=4), meta("b1", "b", True, length=6),
    ]
    result = summarize_eval(metas, k=2)
    a, b, overall = (result["distributions"][n] for n in ("a", "b", "overall"))
    assert list(result["distributions"]) == ["a", "b", "overall"]
    assert (a["tasks"], a["samples"]) == (2, 4)
    assert a["accuracy"] == 0.25 and a["pass_at_k"] == 0.5
    assert a["reward_mean"] == 0.5 and a["response_len_mean"] == 20 and a["truncated_frac"] == 0.25
    assert b["accuracy"] == 1.0 and b["pass_at_k"] == 1.0
    assert overall["accuracy"] == pytest.approx(3 / 6) and overall["pass_at_k"] == pytest.approx(2 / 3)
    table = evaluation_table(result)
    for text in ("mean@2", "pass@2", "25.0%", "50.0%", "overall"):
        assert text in table
    assert flat_metrics(result)["eval/a/pass_at_k"] == 0.5
    assert "before" in comparison_table(result, result) and "after" in comparison_table(result, result)


def test_tasks_without_an_accuracy_component_report_none():
    result = summarize_eval([meta("t", "x", None), meta("t", "x", None)], k=2)
    row = result["distributions"]["x"]
    assert row["accuracy"] is None and row["pass_at_k"] is None
    assert "-" in evaluation_table(result)


def test_distributions_are_listed_in_natural_order():
    metas = [meta(f"t{n}", f"kk_{n}p", True) for n in (10, 3, 14, 4)] + [meta("a", "add_2d", False), meta("b", "add_10d", False)]
    assert list(summarize_eval(metas)["distributions"]) == ["add_2d", "add_10d", "kk_3p", "kk_4p", "kk_10p", "kk_14p", "overall"]
