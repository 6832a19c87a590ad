"""protocol.summaries: the shared fixed projection of hidden states."""

import pytest
import torch

from protocol.summaries import HIDDEN_K, project, projection


def test_projection_is_the_same_in_every_process_and_differs_by_size():
    a, b = projection(64), projection(64)
    assert a.shape == (64, HIDDEN_K) and torch.equal(a, b)
    assert not torch.equal(projection(64)[:32], projection(32))
    assert abs(float(a.var()) * HIDDEN_K - 1.0) < 0.15  # entries N(0, 1/k)


def test_project_gives_float16_and_keeps_cosines_roughly():
    r = projection(256)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, generator=g), torch.randn(256, generator=g)
    y = 0.8 * x + 0.6 * y  # cosine ~0.8
    px, py = project(x, r), project(y, r)
    assert px.dtype == torch.float16 and px.shape == (HIDDEN_K,)
    cos = torch.nn.functional.cosine_similarity
    assert abs(float(cos(px.float(), py.float(), dim=0)) - float(cos(x, y, dim=0))) < 0.2
    assert torch.isfinite(project(torch.full((256,), 1e9), r).float()).all()  # clamped into float16 range


def test_project_names_a_size_mismatch():
    with pytest.raises(ValueError, match="hidden size 10 does not match"):
        project(torch.zeros(10), projection(12))
