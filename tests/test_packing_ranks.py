"""Two learner ranks under ZeRO-3 (real DeepSpeed launcher, gloo): the packed step's full gradients and losses
equal the padded per-sample step's, for GRPO (KL, entropy) and PPO (critic, GAE whitened across ranks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from learner import distributed as ld
from tests.test_distributed import free_port

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from deepspeed.utils import safe_get_full_grad
    from learner.critic import build_critic_engine
    from learner.distributed import barrier, rank, world_size
    from learner.engine import build_policy_engine, build_reference_model, init_distributed
    from learner.logprobs import hf_config
    from learner.plan import Layout, choose_layout
    from learner.step import train_step
    from tests.packing_exactness import ALGORITHMS, exactness_samples

    def capture_grads(engine, into):
        real_step = engine.step
        def step(*args, **kwargs):
            if engine.is_gradient_accumulation_boundary():  # every rank, same order: the gathers are collective
                into.update({n: safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()})
            return real_step(*args, **kwargs)
        engine.step = step

    init_distributed()
    torch.set_num_threads(1)
    model, out = os.environ["PROBE_MODEL"], {}
    for algorithm in ("grpo", "ppo"):
        settings = ALGORITHMS[algorithm]
        result = {}
        for name, layout in (("packed", Layout(packing=True, max_tokens_per_micro_batch=48)),
                             ("padded", Layout(packing=False, micro_batch_size=1))):
            engine = build_policy_engine(model, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0, total_steps=10,
                                         zero_stage=3, micro_batch_size=1, grad_accum_steps=1, grad_clip=0.0, dtype="float32", seed=0)
            critic = None
            if settings.gae:
                critic = build_critic_engine(model, lr=1e-3, warmup_steps=0, total_steps=10, zero_stage=3, micro_batch_size=1,
                                             grad_accum_steps=1, grad_clip=0.0, dtype="float32")
            ref = build_reference_model(model, "float32")
            if name == "packed":  # as the learner runs it: its sdpa models switched to segment attention
                layout = choose_layout(layout, {"policy": engine, "critic": critic, "reference model": ref})
                assert hf_config(engine)._attn_implementation == "rl_segments", hf_config(engine)._attn_implementation
            grads, critic_grads = {}, {}
            capture_grads(engine, grads)
            if critic is not None:
                capture_grads(critic, critic_grads)
            metrics = train_step(engine, exactness_samples(algorithm), settings, layout, ref_model=ref, critic=critic,
                                 rank=rank(), world_size=world_size())
            result[name] = (metrics, grads, critic_grads)
        (m_a, g_a, c_a), (m_b, g_b, c_b) = result["packed"], result["padded"]
        rel = lambda a, b: max((torch.linalg.vector_norm(a[n] - b[n]) / torch.linalg.vector_norm(b[n]).clamp(min=1e-30)).item() for n in b)
        out[algorithm] = {
            "grad_rel": rel(g_a, g_b), "critic_grad_rel": rel(c_a, c_b) if c_b else 0.0,
            "loss": [m_a["loss/total"], m_b["loss/total"]], "value_loss": [m_a.get("loss/value", 0.0), m_b.get("loss/value", 0.0)],
            "kl": [m_a["train/kl"], m_b["train/kl"]], "entropy": [m_a["train/entropy"], m_b["train/entropy"]],
        }
    with open(os.path.join(os.environ["PROBE_OUT"], f"rank-{rank()}.json"), "w") as handle:
        json.dump(out, handle)
    barrier()
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.e2e
def test_two_zero3_ranks_packed_equal_padded(tmp_path, tiny_model_dir):
    (tmp_path / "packing_probe.py").write_text(PROBE)
    command = ld.learner_command([], 2, None, free_port(), sys.executable, module="packing_probe")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
               PROBE_OUT=str(tmp_path), PROBE_MODEL=str(tiny_model_dir))
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the two ranks did not finish:\n{proc.communicate()[0][-5000:]}")
    assert proc.returncode == 0, log[-5000:]
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    for algorithm in reports[0]:  # the ranks agree on every reduced figure
        assert json.dumps(reports[0][algorithm]) == json.dumps(reports[1][algorithm])
    for algorithm, report in reports[0].items():
        assert report["grad_rel"] <= 1e-4 and report["critic_grad_rel"] <= 1e-4, (algorithm, report)
        for key in ("loss", "value_loss", "kl", "entropy"):
            packed, padded = report[key]
            assert packed == pytest.approx(padded, rel=1e-5, abs=1e-9), (algorithm, key, report)
    assert reports[0]["ppo"]["value_loss"][1] > 0 and reports[0]["grpo"]["entropy"][1] > 0  # real work was compared
