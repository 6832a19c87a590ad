"""Checkpoints: model + optimizer + run position, written atomically (DESIGN §3).

What it does: `save_checkpoint` writes `checkpoint/` as a Hugging Face model folder
(safetensors), `optimizer.pt` (tensors and plain containers only, read back with
`torch.load(weights_only=True)`), and `state.json` (step, version, samples trained,
held-out accuracy before, prompt cursor), into a temp folder that is fsynced and renamed
over the old one. `load_checkpoint` reads it back.

What it does not do: it keeps one checkpoint (the last), and it does not store the
ledger (the ledger is its own SQLite file; `Ledger.rewind` reconciles the two).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(folder: Path, model, tokenizer, optimizer, state: dict, cursor: int) -> None:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "cursor": cursor}, indent=2))
    _fsync_tree(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, optimizer) -> dict:
    """Load optimizer state in place; return the saved run state (the model loads from `folder`)."""
    folder = Path(folder)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return json.loads((folder / "state.json").read_text())
