"""Scorer-worker side of the verifier: look up a task by name and score completions.

What it does: `score_many` runs in a worker process's main thread (tasks such as `math`
rely on `signal.alarm`), scores each completion with the task's `score` (a task name
holding ":" is a plug-in reward, verifiers/plugin.py), and returns
rewards, per-sample details (JSON-safe scalars only) and the task's version string.

`settings` (from the run's config, see `settings_from_config`) reach a task's `score` as
keyword arguments, only those the task names in its `SETTINGS` tuple.

What it does not do: no timeouts of its own (the service bounds each completion), no
caching, no sandboxing (tasks that execute code use `verifiers.sandbox`).
"""

from __future__ import annotations

from verifiers import plugin
from verifiers.tasks import TASKS

TASK_NAMES = tuple(TASKS)
DETAIL_STR_CAP = 500  # detail strings are cut to this many characters


def _task(name: str):
    if plugin.is_plugin(name):  # "package.module:function": a plug-in reward (verifiers/plugin.py)
        return plugin.task(name)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
    return TASKS[name]


def task_version(name: str) -> str:
    return _task(name).VERSION


def _clean(detail: dict) -> dict:
    out = {}
    for k, v in detail.items():
        if k == "reward":
            continue
        if isinstance(v, str):
            v = v[:DETAIL_STR_CAP]
        elif v is not None and not isinstance(v, (int, float, bool)):
            v = str(v)[:DETAIL_STR_CAP]
        out[str(k)] = v
    return out


def settings_from_config(cfg) -> dict:
    """The scoring settings of a RunConfig: numeric tolerance and sandbox strength."""
    return {"rel_tol": cfg.task.rel_tol, "abs_tol": cfg.task.abs_tol,
            "accept_weak_sandbox": cfg.verifier.accept_weak_sandbox}


def score_many(task: str, prompt: str, meta: dict, completions: list[str],
               settings: dict | None = None) -> tuple[list[float], list[dict], str]:
    mod = _task(task)
    kwargs = {k: v for k, v in (settings or {}).items() if k in getattr(mod, "SETTINGS", ())}
    rewards, details = [], []
    for completion in completions:
        result = mod.score(prompt, meta, completion, **kwargs)
        rewards.append(float(result["reward"]))
        details.append(_clean(result))
    return rewards, details, mod.VERSION
