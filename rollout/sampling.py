"""Generate and score: tasks in, scored samples out. Shared by rollout workers and `rl eval`.

Prompts are the tasks' chat messages rendered with the model's own chat template (`rl/prompts.py`);
each sample is scored with its task's reward set and tagged with who made it and from which policy
version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from rewards.pool import RewardPool
from rl.prompts import render_prompts
from rl.wire import SampleMeta, SamplingParams, Task


@dataclass
class SampleBatch:
    metas: list[SampleMeta] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)  # all samples' prompts, concatenated
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    generate_seconds: float = 0.0  # wall time inside the engine
    score_seconds: float = 0.0  # wall time in the reward pool

    def frames(self) -> list[np.ndarray]:
        """The three array frames of a `Samples` message."""
        return [
            np.asarray(self.prompt_ids, dtype=np.int32),
            np.asarray(self.completion_ids, dtype=np.int32),
            np.asarray(self.logprobs, dtype=np.float32),
        ]


def sample_and_score(
    engine, tokenizer, rewards: RewardPool, tasks: list[Task], sampling: SamplingParams, *,
    sample_prefix: str, policy_version: int, worker_id: int,
) -> SampleBatch:
    prompts = render_prompts(tokenizer, tasks)
    started = time.perf_counter()
    outputs = engine.generate(
        prompts, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
        max_tokens=sampling.max_tokens, seed=sampling.seed,
    )
    generated = time.perf_counter()
    flat = [(t, s, completion) for t, completions in enumerate(outputs) for s, completion in enumerate(completions)]
    groups: dict[int, list[int]] = {}
    for index, (t, _, _) in enumerate(flat):
        groups.setdefault(t, []).append(index)
    task_dicts = [task.model_dump() for task in tasks]
    scored = rewards.score(
        [c.text for _, _, c in flat],
        [task_dicts[t] for t, _, _ in flat],
        [{"num_tokens": len(c.token_ids), "finish_reason": c.finish_reason, "token_ids": list(c.token_ids),
          "max_new_tokens": sampling.max_tokens} for _, _, c in flat],
        groups=list(groups.values()),
    )
    batch = SampleBatch(generate_seconds=generated - started, score_seconds=time.perf_counter() - generated)
    for (t, s, completion), score in zip(flat, scored):
        task, prompt = tasks[t], prompts[t]
        batch.metas.append(
            SampleMeta(
                sample_id=f"{sample_prefix}-t{t}-s{s}",
                task_id=task.task_id,
                distribution=task.distribution,
                prompt_len=len(prompt),
                completion_len=len(completion.token_ids),
                reward=score.total,
                reward_components=score.components,
                reward_failed=score.failed,
                correct=score.correct,
                finish_reason=completion.finish_reason,
                policy_version=policy_version,
                worker_id=worker_id,
                text=completion.text,
            )
        )
        batch.prompt_ids.extend(prompt)
        batch.completion_ids.extend(completion.token_ids)
        batch.logprobs.extend(completion.logprobs)
    return batch
