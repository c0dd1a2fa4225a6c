"""The packed layout computes what one padded row per sample computes, for every algorithm (tiny model, fp32).

Tolerances from the learner issue: logprobs within 5e-5, the loss within 1e-5 relative, every
parameter's gradient within 1e-4 as ||g_packed - g_padded|| / ||g_padded|| per tensor.
"""

import pytest
import torch

from tests.packing_exactness import ALGORITHMS, TOLERANCES, compare_layouts
from tests.test_learner_engine import two_threads  # noqa: F401  (module-wide: 2 torch threads)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_packed_matches_padded_per_sample(tiny_model_dir, algorithm):
    gaps = compare_layouts(str(tiny_model_dir), algorithm, torch.device("cpu"))
    for name, tolerance in TOLERANCES.items():
        assert gaps[name] <= tolerance, f"{algorithm}: {name} = {gaps[name]:.3g} > {tolerance:g} ({gaps})"


def test_eager_attention_gets_an_additive_mask_and_matches_too(tiny_model_dir):
    gaps = compare_layouts(str(tiny_model_dir), "ppo", torch.device("cpu"), attention="eager")
    for name, tolerance in TOLERANCES.items():
        assert gaps[name] <= tolerance, f"eager: {name} = {gaps[name]:.3g} > {tolerance:g} ({gaps})"
