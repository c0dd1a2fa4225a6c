"""Segment attention computes exactly what SDPA over the packed row with its 4D mask computes, with less work."""

import pytest
import torch
import torch.nn.functional as F

from learner.batch import TrainSample, collate_packed
from learner.segment_attention import build_segments, segment_attention_forward


class Attention:  # what the function reads from transformers' attention module: nothing but the call itself
    pass


def packed_row(shapes: list[tuple[int, list[int]]]):
    groups = [[TrainSample(list(range(1, p + 1)), list(range(1, c + 1)), [0.0] * c, 0.0) for c in cs] for p, cs in shapes]
    return collate_packed(groups)


SHAPES = [(7, [3, 9, 1, 5]), (12, [1, 1, 1]), (4, [6, 2]), (1, [2]), (2, [100, 90, 1, 40])]  # the last: 3 chunks


def test_segment_attention_equals_masked_sdpa_and_its_gradients():
    mb = packed_row(SHAPES)
    length = mb.input_ids.shape[1]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, length, 8, generator=g, requires_grad=True)  # 4 query heads over 2 key/value heads (GQA)
    k = torch.randn(1, 2, length, 8, generator=g, requires_grad=True)
    v = torch.randn(1, 2, length, 8, generator=g, requires_grad=True)
    out, _ = segment_attention_forward(Attention(), q, k, v, None, scaling=0.3, segments=mb.segments)
    reference = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                               attn_mask=mb.attention_mask, scale=0.3).transpose(1, 2)
    assert out.shape == reference.shape == (1, length, 4, 8)
    assert torch.allclose(out, reference, atol=1e-6)
    weights = torch.randn(reference.shape, generator=g)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    reference_grads = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for ours, theirs in zip(grads, reference_grads):
        assert torch.allclose(ours, theirs, atol=1e-5)


def scores(mb) -> int:
    return sum((b.end - b.start) * sum(e - s for s, e in b.key_spans) for b in mb.segments.blocks)


def test_segments_compute_far_fewer_scores_than_the_row():
    quickstart = packed_row([(130, [30, 25, 40, 20]), (125, [35, 10, 30, 30])])
    assert scores(quickstart) < 0.45 * quickstart.input_ids.shape[1] ** 2
    large_group = packed_row([(300, [100] * 16)])  # chunked: sibling pairs do not grow with the group squared
    assert len(large_group.segments.blocks) == 1 + 6
    assert scores(large_group) < 0.3 * large_group.input_ids.shape[1] ** 2


def test_segments_must_tile_the_row():
    with pytest.raises(ValueError, match="tile the row"):
        build_segments([(0, 3, [2])], length=6)
