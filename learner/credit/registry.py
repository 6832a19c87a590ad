"""The credit registry, resolved: method name -> (spec, weight function).

What it does: reads the one registry of specs (`protocol.credit_methods.CREDIT_METHODS`:
function path, needed inputs, schedule, gate, mean-one contract) and imports each
"module:attribute" function once, at import time, so a spec naming a missing function
fails the first import of the credit package, not a training step. `variant(name)`
returns the resolved `Variant`.

What it does NOT do: define variants (`variants.py`, `cuts.py`) or their specs (protocol).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from protocol.credit_methods import CREDIT_METHODS, CreditMethod

CreditFn = Callable[..., Tensor]  # (batch: CreditBatch, *, lam: float) -> w [B, T]


@dataclass(frozen=True)
class Variant:
    """A registered credit method; calling it calls its weight function."""

    name: str
    spec: CreditMethod
    fn: CreditFn

    def __call__(self, batch, *, lam: float) -> Tensor:
        return self.fn(batch, lam=lam)


def _resolve(path: str) -> CreditFn:
    module, _, attr = path.partition(":")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ImportError(f"credit spec names {path!r}, which is not a function")
    return fn


REGISTRY: dict[str, Variant] = {name: Variant(name, spec, _resolve(spec.function))
                                for name, spec in CREDIT_METHODS.items()}


def variant(name: str) -> Variant:
    if name not in REGISTRY:
        raise KeyError(f"unknown credit method {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]
