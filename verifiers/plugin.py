"""Plug-in rewards: `[task] reward = "package.module:function"` (DESIGN §7).

What it does: `load_reward(spec)` imports the module and returns the function, or raises
`PluginError` with one line that names the spec and the problem (the launcher and the
verifier call it at start, so a broken path never gets as far as a training step).
`PluginTask(spec)` looks like a built-in task module to the scorer workers
(verifiers/scoring.py resolves a task name holding ":" to one): `VERSION` stamps verdicts
and keys the verdict cache, and is `plugin:<spec>:<sha256 of the module's source>[:12]`,
so editing the function's file starts a fresh cache; `score(prompt, meta, completion)`
calls the user's function as

    function(prompt: str, completion: str, meta: dict) -> float | dict

where a dict carries "reward" plus any details (JSON scalars) the verdicts pass on.
The function runs in the verifier's scorer worker processes under the same per-job
timeout, cache and stamping as the built-in tasks; `meta` is the prompt row's meta
(answer, tests, ... — never seen by actors).

Fault policy (the one place it catches): a function that raises, or returns something
that is not a finite reward in [0, 1], gives reward 0 with reason "plugin_error: ..."
for that completion; the others are scored as usual.

What it does NOT do: sandbox the user's function (it is the user's own trusted code,
run like a built-in scorer; put code execution in verifiers.sandbox), or reload a
module that changed while the verifier runs.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
from pathlib import Path

from protocol.config import ConfigError


class PluginError(ConfigError):
    """A plug-in reward that cannot be used; one line naming the spec and the problem."""


def _split(spec: str) -> tuple[str, str]:
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise PluginError(f"[task] reward = {spec!r}: expected 'package.module:function'")
    return module, name


def load_reward(spec: str):
    """The callable named by spec; PluginError (one line) if it cannot be imported or called."""
    module_name, name = _split(spec)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's import error, whatever it is, becomes one line
        raise PluginError(f"[task] reward = {spec!r}: cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc})") from None
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise PluginError(f"[task] reward = {spec!r}: module {module_name!r} has no callable {name!r}")
    return fn


def source_sha(fn) -> str:
    """sha256 of the file defining fn (empty string for a module without a source file)."""
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else ""


def to_result(value) -> dict:
    """A plug-in's return value -> {"reward", ...details}; anything unusable -> reward 0 with a reason."""
    detail = {}
    if isinstance(value, dict):
        detail = {k: v for k, v in value.items() if k != "reward"}
        value = value.get("reward")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return {"reward": 0.0, "reason": f"plugin_error: returned {type(value).__name__}, expected a number"}
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return {"reward": 0.0, "reason": f"plugin_error: reward {value!r} outside [0, 1]"}
    return {"reason": "plugin", **detail, "reward": float(value)}


class PluginTask:
    """A plug-in reward with the interface of a task module (VERSION, score)."""

    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_reward(spec)
        self.VERSION = f"plugin:{spec}:{source_sha(self.fn)[:12]}"

    def score(self, prompt: str, meta: dict, completion: str) -> dict:
        try:
            value = self.fn(prompt, completion, meta)
        except Exception as exc:  # fault policy: this completion scores 0, the job goes on
            return {"reward": 0.0, "reason": f"plugin_error: {type(exc).__name__}: {exc}"}
        return to_result(value)


_LOADED: dict[str, PluginTask] = {}  # per process: imported once


def task(spec: str) -> PluginTask:
    if spec not in _LOADED:
        _LOADED[spec] = PluginTask(spec)
    return _LOADED[spec]


def is_plugin(name: str) -> bool:
    return ":" in name
