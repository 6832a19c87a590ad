"""Generation engines for actors, chosen by `[actor] engine` ("hf" or "vllm").

`make_engine` builds one from the actor config section; the vLLM module is imported only
when asked for, so an install without vllm runs the HF engine. Both engines share one
interface: `generate(prompts, n, *, temperature, top_p, max_new_tokens, batch_size)` (prompts
as token ids, or texts encoded raw),
`load_weights(folder, manifest_sha256)`, `digest()`, `canary()`, `version`.

What this does NOT do: fall back from vllm to hf when vllm is missing (that would train a
different engine than the config says; the ImportError propagates).
"""

from __future__ import annotations

import zlib
from pathlib import Path

ENGINES = ("hf", "vllm")


def engine_seed(name: str) -> int:
    """Per-actor sampling seed: crc32 of the actor's name (stable across restarts)."""
    return zlib.crc32(name.encode())


def make_engine(cfg, folder: Path, name: str):
    """Engine named by `cfg.engine` (an `ActorConfig`), loaded from a model folder.

    threads = cfg.threads, seed = engine_seed(name), stop = cfg.stop (stop strings), device =
    cfg.device where the config has that field (default: hf on "cpu", vllm on "auto" = CUDA when available).
    Raises ValueError for an unknown name.
    """
    device = getattr(cfg, "device", None)
    stop = tuple(getattr(cfg, "stop", ()))
    if cfg.engine == "hf":
        from actors.engines.hf import HFEngine

        return HFEngine(folder, threads=cfg.threads, seed=engine_seed(name), device=device or "cpu", stop=stop)
    if cfg.engine == "vllm":
        from actors.engines.vllm import VLLMEngine

        return VLLMEngine(folder, threads=cfg.threads, seed=engine_seed(name), device=device or "auto", stop=stop)
    raise ValueError(f"unknown engine {cfg.engine!r}; expected one of {ENGINES}")
