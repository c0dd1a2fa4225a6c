"""learner.plan: groups into rows up to the token budget, mini-batches, ranks balanced by tokens, lockstep copies."""

import logging

from learner.batch import TrainSample
from learner.plan import Layout, assign_to_ranks, choose_layout, epoch_plans, pack_groups, plan_step


def group(prompt_len: int, completion_lens: list[int], first_token: int, in_loss: bool = True) -> list[TrainSample]:
    prompt = list(range(first_token, first_token + prompt_len))
    return [TrainSample(prompt, [7] * c, [-1.0] * c, 0.5, in_loss=in_loss) for c in completion_lens]


def test_first_fit_decreasing_and_a_group_over_the_budget_gets_its_own_row():
    # decreasing: 200 alone (over the budget); 60 opens a row, 50 opens another, 40 joins 60, 30 joins 50
    assert pack_groups([60, 30, 50, 40, 200], 100) == [[4], [0, 3], [1, 2]]
    assert pack_groups([10], 5) == [[0]]


def test_more_mini_batches_than_samples_leave_no_empty_update():
    assert len(plan_step(group(3, [2], 100), Layout(), mini_batches=3)) == 1


def test_packed_plan_puts_each_prompt_once_and_respects_the_budget():
    samples = group(10, [5, 5], 100) + group(20, [10, 10, 10], 200) + group(100, [50], 300)  # 20, 50 and 150 tokens
    (plan,) = plan_step(samples, Layout(packing=True, max_tokens_per_micro_batch=80))
    rows = [mb.input_ids.shape[1] for mb in plan.micro_batches]
    assert sorted(rows) == [70, 150]  # the two small groups share a row; the 150-token group is alone
    assert sum(len(mb.sample_index) for mb in plan.micro_batches) == 6
    assert sorted(i for mb in plan.micro_batches for i in mb.sample_index) == list(range(6))
    assert plan.num_tokens == 90 and plan.num_sequences == 6 and plan.weights == [1.0, 1.0]


def test_interleaved_groups_are_regrouped_and_mini_batches_split_the_samples():
    a, b = group(4, [1, 2], 100), group(6, [3, 4], 200)
    samples = [a[0], b[0], a[1], b[1]]
    plans = plan_step(samples, Layout(packing=True), mini_batches=2)
    assert [sorted(i for mb in p.micro_batches for i in mb.sample_index) for p in plans] == [[0, 2], [1, 3]]
    assert [p.num_tokens for p in plans] == [3, 7]
    assert [p.micro_batches[0].input_ids.shape[1] for p in plans] == [4 + 3, 6 + 7]  # one prompt per group


def test_ranks_get_balanced_tokens_and_equal_pass_counts():
    samples = group(10, [30], 100) + group(10, [20], 200) + group(10, [10], 300) + group(10, [5], 400)
    layout = Layout(packing=False, micro_batch_size=1)
    shares = [plan_step(samples, layout, rank=r, world_size=3)[0] for r in range(3)]
    # 40, 30, 20, 15 tokens: largest first to the least-loaded rank -> {40}, {30}, {20, 15}
    tokens = [sorted(mb.input_ids.numel() for mb, w in zip(s.micro_batches, s.weights) if w > 0) for s in shares]
    assert tokens == [[40], [30], [15, 20]]
    assert [len(s.micro_batches) for s in shares] == [2, 2, 2]  # lockstep: the same number of passes
    assert [s.weights for s in shares] == [[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    assert all(s.num_tokens == 65 for s in shares)  # every rank knows the whole mini-batch's denominator
    assert assign_to_ranks([], 2) == [[], []]


def test_packed_rows_leave_work_for_every_rank():
    samples = [s for k in range(4) for s in group(10, [5, 5], 100 * (k + 1))]  # four groups of 20 tokens
    shares = [plan_step(samples, Layout(packing=True, max_tokens_per_micro_batch=1000), rank=r, world_size=2)[0] for r in range(2)]
    assert [sum(mb.input_ids.numel() for mb in s.micro_batches) for s in shares] == [40, 40]
    assert all(w == 1.0 for s in shares for w in s.weights)


def test_filtered_samples_leave_the_denominators():
    samples = group(3, [4, 4], 100) + group(3, [2], 200, in_loss=False)
    (plan,) = plan_step(samples, Layout())
    assert plan.num_tokens == 8 and plan.num_sequences == 2


def mini_batch_order(plans) -> list[list[int]]:
    """Each update's samples (lockstep copies left out), in the order the updates run."""
    return [[i for mb, weight in zip(plan.micro_batches, plan.weights) if weight > 0 for i in mb.sample_index] for plan in plans]


def test_each_epoch_takes_the_mini_batches_in_its_own_seeded_order():
    samples = [s for k in range(8) for s in group(3 + k, [2, 3], 100 * (k + 1))]  # 8 groups of 2
    layout = Layout(packing=True, max_tokens_per_micro_batch=1000)

    def orders(seed, step, epochs=3):
        return [mini_batch_order(plans) for plans in epoch_plans(samples, layout, 4, epochs, seed=seed, step=step)]

    first, second, third = orders(seed=0, step=5)
    assert first != second and second != third and first != third  # the updates of each epoch see other samples
    for epoch in (first, second, third):  # every epoch covers the batch once, whole groups, 4 updates
        assert sorted(i for update in epoch for i in update) == list(range(16)) and len(epoch) == 4
        assert all(i // 2 * 2 in update and i // 2 * 2 + 1 in update for update in epoch for i in update)
    assert orders(seed=0, step=5) == [first, second, third]  # same seed and step: the same orders (every rank agrees)
    assert orders(seed=1, step=5)[0] != first and orders(seed=0, step=6)[0] != first
    ranks = [epoch_plans(samples, layout, 4, 2, seed=0, step=5, rank=r, world_size=2) for r in range(2)]
    for epoch in range(2):  # two ranks split each epoch's mini-batches between them, in the same order
        together = [sorted(a + b) for a, b in zip(mini_batch_order(ranks[0][epoch]), mini_batch_order(ranks[1][epoch]))]
        assert together == [sorted(update) for update in (first, second)[epoch]]


def test_one_mini_batch_keeps_one_plan_for_every_epoch():
    samples = group(3, [2, 2], 100) + group(4, [1, 3], 200)
    (plans,) = epoch_plans(samples, Layout(), 1, 3, seed=0, step=1)
    assert mini_batch_order(plans) == mini_batch_order(plan_step(samples, Layout()))


class FakeModel:
    """Only what packing_unsupported_reason reads: a config and a forward signature."""

    def __init__(self, attention: str):
        self.config = type("Config", (), {"_attn_implementation": attention})()

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        raise AssertionError("not called")


def test_a_model_whose_attention_takes_no_mask_falls_back_to_padded_with_one_line(caplog):
    caplog.set_level(logging.INFO, logger="learner")
    wanted = Layout(packing=True, micro_batch_size=4)
    policy, eager = FakeModel("sdpa"), FakeModel("eager")
    assert choose_layout(wanted, {"policy": policy, "critic": None, "reference model": eager}).packing
    # sdpa models run the packed rows through segment attention; eager keeps its additive 4D mask
    assert policy.config._attn_implementation == "rl_segments" and eager.config._attn_implementation == "eager"
    fallback = choose_layout(wanted, {"policy": FakeModel("sdpa"), "reference model": FakeModel("flash_attention_2")})
    assert not fallback.packing and fallback.micro_batch_size == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "reference model" in warnings[0] and "flash_attention_2" in warnings[0]
    assert not choose_layout(Layout(packing=False), {"policy": FakeModel("flash_attention_2")}).packing
