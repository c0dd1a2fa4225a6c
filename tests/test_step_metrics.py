"""The generation-rate metrics: the engines' own generate time, apart from the learner's wait."""

from learner.collect import StepBatch
from learner.step_metrics import generation_metrics
from tests.test_algorithms import TRAJECTORIES


def test_generate_rate_divides_generated_tokens_by_engine_seconds():
    batch = StepBatch({})
    batch.generated = TRAJECTORIES  # 8 samples of 2 completion tokens
    batch.generate_seconds, batch.wait_seconds = 4.0, 9.0
    metrics = generation_metrics(batch)
    assert metrics == {"rollout/wait_seconds": 9.0, "time/rollout_wait_seconds": 9.0, "rollout/generate_seconds": 4.0,
                       "rollout/generate_tokens_per_s": 16 / 4.0}


def test_no_generate_rate_when_no_worker_gave_its_timings():
    batch = StepBatch({})
    batch.generated = TRAJECTORIES
    assert generation_metrics(batch) == {"rollout/wait_seconds": 0.0, "time/rollout_wait_seconds": 0.0}
