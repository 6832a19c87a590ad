"""Task registry: name -> module with `score(prompt, meta, completion) -> dict` and
`VERSION`; procedural tasks (arith, countdown) also have `generate(seed, n, split)`, JSONL
tasks (math, code) have `load(path)`. Modules are imported on first access, so importing
this package stays cheap and a task's heavy dependencies load only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

_MODULES = {"arith": "verifiers.tasks.arith", "countdown": "verifiers.tasks.countdown",
            "math": "verifiers.tasks.math", "code": "verifiers.tasks.code"}
PROCEDURAL = ("arith", "countdown")
JSONL = ("math", "code")


class _Registry(Mapping):
    def __getitem__(self, name: str) -> ModuleType:
        if name not in _MODULES:
            raise KeyError(f"unknown task {name!r}; known: {sorted(_MODULES)}")
        return importlib.import_module(_MODULES[name])

    def __iter__(self):
        return iter(_MODULES)

    def __len__(self):
        return len(_MODULES)


TASKS: Mapping[str, ModuleType] = _Registry()


def get(name: str) -> ModuleType:
    return TASKS[name]
