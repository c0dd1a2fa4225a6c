"""RUN/completions.jsonl: every sample of a logged step, one JSON object each, a group's samples in
consecutive rows (`group` numbers the step's groups in the order they came)."""

from __future__ import annotations

from typing import Any

from learner.collect import StepBatch


def completions_due(step: int, every: int) -> bool:
    """Whether step `step` is logged (logging.completions_every; 0: never)."""
    return every > 0 and step % every == 0


def completion_rows(step: int, batch: StepBatch) -> list[dict[str, Any]]:
    """One row per fresh sample of the step (every dynamic-sampling round, `trained` says which were trained on)."""
    group_index: dict[str, int] = {}
    for t in batch.generated:
        group_index.setdefault(t.group_key, len(group_index))
    trained = {t.meta.sample_id for t in batch.trained}
    ordered = sorted(batch.generated, key=lambda t: group_index[t.group_key])  # stable: a group's samples keep their order
    return [{
        "step": step,
        "group": group_index[t.group_key],
        "distribution": t.meta.distribution,
        "task_id": t.meta.task_id,
        "sample_id": t.meta.sample_id,
        "prompt": batch.questions.get(t.meta.task_id, ""),
        "completion": t.meta.text,
        "reward": t.meta.reward,
        "reward_components": dict(t.meta.reward_components),
        "advantage": batch.advantages.get(t.meta.sample_id, 0.0),
        "correct": t.meta.correct,
        "length": t.meta.completion_len,
        "finish_reason": t.meta.finish_reason,
        "policy_version": t.meta.policy_version,
        "worker": t.meta.worker_id,
        "trained": t.meta.sample_id in trained,
    } for t in ordered]
