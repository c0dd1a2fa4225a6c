import time
from pathlib import Path

import pytest

from rewards.pool import RewardPool
from rl.wire import Task

MISBEHAVING = str(Path(__file__).parent / "rewards_misbehaving.py")


def task_dict(answer="3"):
    return Task(task_id="t", distribution="d", messages=[{"role": "user", "content": "q"}], answer=answer).model_dump()


@pytest.fixture
def pool_factory():
    pools = []

    def make(specs, timeout_s=1.0, processes=2, modules=()):
        pool = RewardPool(specs, num_processes=processes, timeout_s=timeout_s, modules=modules)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def test_raising_and_hanging_rewards_score_their_failure_value_within_the_timeout(pool_factory):
    pool = pool_factory([
        {"name": "boxed_answer", "weight": 1.0},
        {"name": f"{MISBEHAVING}:raises", "weight": 1.0, "on_error": -1.0},
        {"name": f"{MISBEHAVING}:sleeps", "weight": 1.0, "on_error": -2.0, "seconds": 60},
    ], timeout_s=1.0)
    pool.score(["warm-up"], [task_dict()], [{}])  # children started and ready
    start = time.monotonic()
    scored = pool.score(["\\boxed{3}", "\\boxed{4}"], [task_dict(), task_dict()], [{}, {}])
    elapsed = time.monotonic() - start
    assert elapsed < 3.5, f"a hung reward stalled scoring for {elapsed:.1f} s"
    assert [s.components for s in scored] == [
        {"boxed_answer": 1.0, "raises": -1.0, "sleeps": -2.0},
        {"boxed_answer": 0.0, "raises": -1.0, "sleeps": -2.0},
    ]
    assert [s.total for s in scored] == [-2.0, -3.0]
    assert sorted(scored[0].failed) == ["raises", "sleeps"]
    assert pool.errors["raises"] == 3 and pool.errors["sleeps"] == 3


def test_pool_survives_a_reward_that_kills_its_process(pool_factory):
    pool = pool_factory([{"name": f"{MISBEHAVING}:exits", "on_error": -5.0}, {"name": "boxed_format"}])
    scored = pool.score(["\\boxed{1}"] * 3, [task_dict()] * 3, [{}] * 3)
    assert [s.components["exits"] for s in scored] == [-5.0] * 3
    assert [s.components["boxed_format"] for s in scored] == [1.0] * 3
    assert pool.score(["\\boxed{2}"], [task_dict("2")], [{}])[0].components["boxed_format"] == 1.0


def test_context_and_batch_rewards(pool_factory):
    pool = pool_factory([{"name": f"{MISBEHAVING}:length"}, {"name": f"{MISBEHAVING}:rank_in_group"}])
    completions = ["aaaa", "a", "aaa", "aa"]
    scored = pool.score(completions, [task_dict()] * 4, [{"num_tokens": n} for n in (4, 1, 3, 2)], groups=[[0, 1], [2, 3]])
    assert [s.components["length"] for s in scored] == [4.0, 1.0, 3.0, 2.0]
    assert [s.components["rank_in_group"] for s in scored] == [0.0, 1.0, 0.0, 1.0]


def test_a_reward_can_ask_for_the_completion_token_ids(pool_factory):
    for_tests = str(Path(__file__).parent / "rewards_for_tests.py")
    pool = pool_factory([{"name": f"{for_tests}:token_share", "token_id": 7}])
    scored = pool.score(["x", "y"], [task_dict()] * 2, [{"token_ids": [7, 1, 7, 2]}, {"token_ids": [3]}])
    assert [s.components["token_share"] for s in scored] == [0.5, 0.0]


def test_dict_returning_rewards_sum_and_bad_return_types_fail(pool_factory):
    pool = pool_factory([{"name": f"{MISBEHAVING}:parts", "weight": 2.0}, {"name": f"{MISBEHAVING}:wrong_type", "on_error": -1.0}])
    (scored,) = pool.score(["ab12c"], [task_dict()], [{}])
    assert scored.components == {"parts": 5.0, "parts.letters": 3.0, "parts.digits": 2.0, "wrong_type": -1.0}
    assert scored.total == 2.0 * 5.0 - 1.0
    assert scored.failed == ["wrong_type"]


def test_a_decorated_reward_is_usable_by_its_name_once_its_module_is_listed(pool_factory, monkeypatch):
    from rewards.registry import REGISTRY, RewardConfigError, build_reward

    monkeypatch.delitem(REGISTRY, "rank_in_group", raising=False)  # other tests imported the file already

    with pytest.raises(RewardConfigError, match="'rank_in_group' does not exist"):
        build_reward([{"name": "rank_in_group"}])
    pool = pool_factory([{"name": "rank_in_group"}], modules=[MISBEHAVING])
    scored = pool.score(["aaa", "a"], [task_dict()] * 2, [{}] * 2)
    assert [s.components["rank_in_group"] for s in scored] == [0.0, 1.0]


def test_each_task_is_scored_by_its_own_reward_set(pool_factory):
    """Mixed sources in one batch: arithmetic tasks by boxed_answer, K&K-like tasks by format + a custom judge."""
    pool = pool_factory({
        "0:arithmetic": [{"name": "boxed_answer", "weight": 1.0}, {"name": "boxed_format", "weight": 0.5}],
        "1:logic": [{"name": "format", "weight": 1.0},
                    {"name": f"{Path(__file__).parent / 'rewards_for_tests.py'}:shorter_is_better", "weight": 1.0, "correctness": True}],
    }, processes=1)
    arithmetic = dict(task_dict("3"), reward_set="0:arithmetic")
    logic = dict(task_dict("3"), reward_set="1:logic")
    scored = pool.score(
        ["\\boxed{3}", "\\boxed{4}", "<think>a</think><answer>b</answer>", "no tags"],
        [arithmetic, arithmetic, logic, logic], [{}] * 4,
    )
    assert scored[0].components == {"boxed_answer": 1.0, "boxed_format": 1.0} and scored[0].total == 1.5
    assert scored[0].correct is True and scored[1].correct is False
    assert set(scored[2].components) == {"format", "shorter_is_better"}
    assert scored[2].components["format"] == 1.0 and scored[3].components["format"] == -1.0
    assert scored[2].correct == (scored[2].components["shorter_is_better"] > 0)
    with pytest.raises(KeyError, match="reward set 'nope'"):
        pool.score(["x"], [dict(task_dict(), reward_set="nope")], [{}])


def test_a_set_without_a_correctness_component_reports_no_accuracy(pool_factory):
    pool = pool_factory([{"name": "boxed_format", "weight": 1.0}], processes=1)
    assert pool.score(["\\boxed{3}"], [task_dict()], [{}])[0].correct is None


def test_a_reward_that_returns_nan_scores_its_failure_value(pool_factory):
    pool = pool_factory([{"name": f"{Path(__file__).parent / 'rewards_misbehaving.py'}:not_a_number", "on_error": -1.0}], processes=1)
    (scored,) = pool.score(["x"], [task_dict()], [{}])
    assert scored.components["not_a_number"] == -1.0 and scored.failed == ["not_a_number"]
