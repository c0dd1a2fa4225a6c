"""A real DeepSpeed engine (CPU, gloo) on the tiny model: steps, gradient accumulation, export, save."""

import pytest
import torch

from learner.batch import TrainSample
from learner.engine import (
    build_policy_engine,
    build_reference_model,
    iter_publish_tensors,
    save_hf,
    warmup_constant_lr_factor,
)
from learner.plan import Layout
from learner.step import StepSettings, train_step

LR = 1e-3


def grpo_step(
    engine, samples: list[TrainSample], *, clip_eps: float, kl_coef: float, temperature: float, ref_model=None,
    layout: Layout = Layout(),
) -> dict[str, float]:
    """GRPO with token-mean aggregation and a k3 KL in the loss: `train_step` with those settings."""
    settings = StepSettings(clip_low=clip_eps, clip_high=clip_eps, kl_coef=kl_coef, temperature=temperature)
    return train_step(engine, samples, settings, layout, ref_model=ref_model)


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def make_engine(model_dir, *, zero_stage=1, micro_batch_size=2, grad_accum_steps=2, warmup_steps=0):
    return build_policy_engine(
        str(model_dir), lr=LR, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=warmup_steps, total_steps=10,
        zero_stage=zero_stage, micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps, grad_clip=0.0,
        dtype="float32", seed=0,
    )  # fmt: skip


def make_samples() -> list[TrainSample]:
    """4 samples with different prompt and completion lengths, so per-micro-batch means differ from the token mean."""
    g = torch.Generator().manual_seed(0)
    lengths = [(5, 2), (3, 9), (7, 4), (4, 1)]
    return [
        TrainSample(
            prompt_ids=torch.randint(100, 5000, (p,), generator=g).tolist(),
            completion_ids=torch.randint(100, 5000, (c,), generator=g).tolist(),
            rollout_logprobs=[-3.0] * c,
            advantage=adv,
        )
        for (p, c), adv in zip(lengths, [1.0, -0.5, 0.8, -1.2])
    ]


def snapshot(engine) -> dict[str, torch.Tensor]:
    return {name: t.clone() for bucket in iter_publish_tensors(engine, torch.float32, 2**20) for name, t in bucket}


def test_warmup_constant_lr_factor():
    assert [warmup_constant_lr_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_constant_lr_factor(0, 0) == 1.0


def test_step_changes_weights_and_export_and_save_round_trip(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = make_engine(tiny_model_dir, warmup_steps=2)
    micro_batches = make_samples()
    before = snapshot(engine)
    metrics = grpo_step(engine, micro_batches, clip_eps=0.2, kl_coef=0.0, temperature=1.0)
    after = snapshot(engine)

    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert metrics["train/lr"] == pytest.approx(LR / 2)  # first warmup step
    assert metrics["train/grad_norm"] > 0 and metrics["train/clip_frac"] == 0.0  # on-policy: ratio 1
    assert metrics["train/logprob_diff"] > 0
    assert all(not torch.equal(before[n], after[n]) for n in before), "every parameter should move"

    # export: HF names, no "module." prefix, tied lm_head sent once, equal to (views of) the live params
    params = dict(engine.module.named_parameters())
    buckets = list(iter_publish_tensors(engine, torch.float32, bucket_bytes=300_000))
    exported = [pair for bucket in buckets for pair in bucket]
    assert [n for n, _ in exported] == list(params) and "model.layers.0.mlp.gate_proj.weight" in params
    assert "lm_head.weight" not in params
    for bucket in buckets:  # ~bucket_bytes each, unless a single tensor is larger
        assert len(bucket) == 1 or sum(t.numel() * 4 for _, t in bucket) <= 300_000
    for name, t in exported:
        assert t.is_contiguous() and t.data_ptr() == params[name].data_ptr()  # a view, no copy
        assert torch.equal(t, params[name].detach())
    bf16 = dict(next(iter(iter_publish_tensors(engine, torch.bfloat16, bucket_bytes=2**30))))
    assert bf16["model.norm.weight"].dtype == torch.bfloat16
    assert torch.equal(bf16["model.norm.weight"], params["model.norm.weight"].detach().bfloat16())

    # second step with a KL term against the (now different) initial weights
    ref = build_reference_model(str(tiny_model_dir), "float32")
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    metrics = grpo_step(engine, micro_batches, clip_eps=0.2, kl_coef=0.5, temperature=1.0, ref_model=ref)
    assert metrics["train/kl"] > 0 and metrics["loss/kl"] == pytest.approx(0.5 * metrics["train/kl"])
    assert metrics["loss/total"] == pytest.approx(metrics["loss/pg"] + metrics["loss/kl"], abs=1e-6)

    save_hf(engine, str(tiny_model_dir), str(tmp_path / "hf"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    state = reloaded.state_dict()
    for name, param in engine.module.named_parameters():
        assert torch.equal(state[name], param.detach()), name
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])  # still tied
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").pad_token_id is not None


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_two_micro_batches_of_two_equal_one_of_four(tiny_model_dir, zero_stage):
    samples = make_samples()
    results = []
    # the first engine is told to accumulate 4 micro-batches but gets 2 (as when stale samples are dropped)
    for micro_batch_size, accum in [(2, 4), (4, 1)]:
        engine = make_engine(tiny_model_dir, zero_stage=zero_stage, micro_batch_size=micro_batch_size, grad_accum_steps=accum)
        before = snapshot(engine)
        layout = Layout(packing=False, micro_batch_size=micro_batch_size)
        metrics = grpo_step(engine, samples, clip_eps=0.2, kl_coef=0.0, temperature=1.0, layout=layout)
        delta = {n: t - before[n] for n, t in snapshot(engine).items()}
        results.append((metrics, delta))
    (m_acc, d_acc), (m_one, d_one) = results
    # Adam's first update is nearly sign(grad) * lr, blind to a grad scale; the grad norm is not.
    assert m_acc["train/grad_norm"] == pytest.approx(m_one["train/grad_norm"], rel=1e-4)
    assert m_acc["loss/total"] == pytest.approx(m_one["loss/total"], rel=1e-4, abs=1e-6)
    for name in d_one:
        assert d_one[name].abs().max() > 0, name
        torch.testing.assert_close(d_acc[name], d_one[name], atol=LR * 1e-2, rtol=0)


def test_zero3_export_gathers_full_weights_and_saves(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    engine = make_engine(tiny_model_dir, zero_stage=3, micro_batch_size=4, grad_accum_steps=1)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    before = snapshot(engine)
    assert {n: t.shape for n, t in before.items()} == {n: reference[n].shape for n in before}
    assert torch.equal(before["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])
    grpo_step(engine, make_samples(), clip_eps=0.2, kl_coef=0.0, temperature=1.0)
    after = snapshot(engine)
    assert all(not torch.equal(before[n], after[n]) for n in before)
    save_hf(engine, str(tiny_model_dir), str(tmp_path / "hf"))
    state = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    for name, t in after.items():
        assert torch.equal(state[name], t), name
