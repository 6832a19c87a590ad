"""Per-token summaries an actor may attach to a sample: the projected hidden state.

What it does: defines the one fixed random projection R [H, k] (seeded from the hidden
size alone, so every actor and the learner build the same matrix without sending it)
and `project`, which maps last-layer hidden states h_t [.., H] to float16 [.., k].
The `hidden` credit variant (learner/credit.py) compares these vectors between the
correct and wrong samples of a group; only directions and cosines matter, so R is a
Johnson–Lindenstrauss projection: entries N(0, 1/k), which keeps cosines within
~1/sqrt(k) of the originals.

"Last-layer hidden state" of completion token t is the output of the model's final
norm at the position whose logits predict token t (the state μ_t was computed from),
as `output_hidden_states` returns it last.

What it does not do: compute hidden states (the engines and learner/summaries.py do),
or learn the projection.
"""

from __future__ import annotations

import torch

HIDDEN_K = 32  # projected dimension k (DESIGN §6 `hidden`)
PROJECTION_SEED = 20_260_601  # fixed: R depends only on (hidden size, k)
F16_MAX = 65_504.0  # largest finite float16; projected values are clamped into range


def projection(hidden_size: int, k: int = HIDDEN_K) -> torch.Tensor:
    """R [H, k] float32, entries N(0, 1/k), identical in every process for the same (H, k)."""
    if hidden_size < 1 or k < 1:
        raise ValueError(f"need hidden_size >= 1 and k >= 1, got {hidden_size}, {k}")
    g = torch.Generator().manual_seed(PROJECTION_SEED + 7919 * hidden_size + k)
    return torch.randn(hidden_size, k, generator=g, dtype=torch.float32) / k**0.5


def project(h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """h [.., H] -> (h @ R) [.., k] as float16 (computed in float32, clamped to ±F16_MAX)."""
    if h.shape[-1] != r.shape[0]:
        raise ValueError(f"hidden size {h.shape[-1]} does not match the projection's {r.shape[0]}")
    return (h.float() @ r.to(h.device)).clamp(-F16_MAX, F16_MAX).to(torch.float16)
