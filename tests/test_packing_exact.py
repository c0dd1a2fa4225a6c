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


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_masked_row_attention_matches_too(tiny_model_dir, attention):
    """The packed row under its 4D mask (bool for sdpa, additive for eager), as models the learner cannot
    switch to segment attention run it."""
    gaps = compare_layouts(str(tiny_model_dir), "ppo", torch.device("cpu"), attention=attention)
    for name, tolerance in TOLERANCES.items():
        assert gaps[name] <= tolerance, f"{attention}: {name} = {gaps[name]:.3g} > {tolerance:g} ({gaps})"
