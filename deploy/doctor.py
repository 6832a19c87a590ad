"""`scca doctor [CONFIG]`: a preflight of everything a run needs, one line per check.

What it does: runs the checks in `CHECKS` in order, each a small named function of a
`Context` (the config, where it came from, the run folder) that returns `(status,
detail)` lines, status one of `ok`, `warn`, `fail`. Checked: the config is valid (file
and line of any problem); this machine (python, torch, cores); the model folder loads;
the tokenizer round-trips the prompts and ends completions (eos ids of the tokenizer and
the folder's configs; padding by the shared rule, so no pad token is needed); the prompt
format renders (a chat format needs a template), and a folder warm-started by `scca
make-model` is asked in the format it learned; the data files
parse (the learner's own readers, file and line of the first bad row); the sandbox's
self-check (a program and a test run, network blocked, kernel limits); the hub address and the metrics port
can be bound; the disk holds the snapshots and checkpoint the run will write; vLLM
imports if chosen; CUDA (and bf16) work if asked. Ends with a verdict line; the exit
status is 1 if any check failed, else 0.

What it does not do: it starts no service, writes nothing but a temporary sandbox run,
and a check that cannot run because an earlier one failed says so (`fail ... skipped`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from protocol.config import ConfigError, RunConfig, load_config

Line = tuple[str, str]  # (status, detail)
DISK_MARGIN = 2.0  # warn below this many times the bytes a run will write
SNAPSHOT_SPARE = 2  # snapshots on disk beyond `keep_snapshots` (the one being written, the one being pruned)


@dataclasses.dataclass
class Context:
    config_path: str
    overrides: dict
    run_dir: Path
    cfg: RunConfig | None = None
    model_folder: Path | None = None
    tokenizer: object | None = None
    model_bytes: int = 0
    model_status: str = "fail"  # of the model check: a later check it skips reports the same
    prompts: list[str] = dataclasses.field(default_factory=list)


def check_config(ctx: Context) -> list[Line]:
    try:
        ctx.cfg = load_config(ctx.config_path, ctx.overrides)
    except ConfigError as exc:
        problems = [p.strip() for p in str(exc).removeprefix("invalid config:").splitlines() if p.strip()]
        return [("fail", p) for p in problems]
    sections = len(RunConfig.model_fields)
    return [("ok", f"{ctx.config_path}: valid ({sections} sections, task {ctx.cfg.task.name}, "
                   f"{ctx.cfg.learner.max_steps} steps)")]


def check_system(ctx: Context) -> list[Line]:
    import torch

    return [("ok", f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} cores, "
                   f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")]


def check_model(ctx: Context) -> list[Line]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ctx.cfg
    folder = Path(cfg.model.folder or cfg.model.bootstrap_dir)
    if not (folder / "config.json").is_file():
        if not cfg.model.folder:
            ctx.model_status = "warn"
            return [("warn", f"{folder}: no bootstrap model yet; `scca run` builds it (a few minutes on 2 cores)")]
        from deploy.preflight import not_a_model_folder

        return [("fail", not_a_model_folder(folder))]
    try:
        model = AutoModelForCausalLM.from_pretrained(folder)
        ctx.tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - reported as the check's result
        return [("fail", f"{folder}: does not load: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")]
    ctx.model_folder = folder
    params = sum(p.numel() for p in model.parameters())
    ctx.model_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return [("ok", f"{folder}: loads ({type(model).__name__}, {params / 1e6:.1f}M parameters, "
                   f"{next(model.parameters()).dtype})")]


def check_data(ctx: Context) -> list[Line]:
    from deploy.preflight import InputError, read_prompt_file
    from verifiers.tasks import PROCEDURAL, TASKS

    cfg, out = ctx.cfg, []
    for split in ("train", "heldout"):
        path = getattr(cfg.task, f"{split}_file")
        try:
            if path:
                rows = read_prompt_file(cfg, split, path)
                out.append(("ok", f"{path}: {len(rows)} {split} rows parse"))
            elif cfg.task.name in PROCEDURAL:
                rows = TASKS[cfg.task.name].generate(cfg.task.seed, 4, split)
                out.append(("ok", f"{split}: procedural {cfg.task.name} ({getattr(cfg.task, f'{split}_size')} rows)"))
            else:
                out.append(("fail", f"task {cfg.task.name!r} needs [task] {split}_file"))
                continue
        except InputError as exc:
            out.append(("fail", str(exc)))
            continue
        ctx.prompts += [r["prompt"] for r in rows[:8]]
    return out


def check_tokenizer(ctx: Context) -> list[Line]:
    """Round trip of sample prompts, and the special tokens by the rules actors and learner
    share (protocol/tokens.py): every eos id of the tokenizer and the folder's configs stops
    a completion; padding uses the pad token, else eos (padded positions are masked, so a
    tokenizer without a pad token, as Qwen and Llama ones come, is fine)."""
    from protocol.tokens import TokenError, eos_ids, pad_id

    tok = ctx.tokenizer
    if tok is None:
        return [(ctx.model_status, "skipped: no model loaded")]
    out = []
    bad = [p for p in ctx.prompts if tok.decode(tok(p, add_special_tokens=False)["input_ids"]) != p]
    out.append(("fail", f"does not round-trip {len(bad)} of {len(ctx.prompts)} prompts, e.g. {bad[0][:60]!r}")
               if bad else ("ok", f"round-trips {len(ctx.prompts)} sample prompts"))
    try:
        ids = eos_ids(tok, ctx.model_folder)
        out.append(("ok", f"eos token {tok.eos_token!r}; completions stop at ids {list(ids)}"))
    except TokenError as exc:
        out.append(("fail", str(exc)))
    pad = pad_id(tok)
    out.append(("ok", f"pad token {tok.pad_token!r}, padding {tok.padding_side}") if tok.pad_token_id is not None
               else ("ok", f"no pad token: batches pad with eos id {pad} (masked)") if tok.eos_token_id is not None
               else ("warn", f"no pad or eos token: batches pad with id {pad} (masked)"))
    return out


def check_prompt_format(ctx: Context) -> list[Line]:
    """The run's [task] prompt_format renders with this tokenizer (a chat format needs a
    template); and, for a folder `scca make-model --warm-start` wrote, the run asks in the
    format and system prompt the model was warm-started on (a small warm-started model
    answers only in that one)."""
    import json

    from protocol.prompts import PromptFormatError, PromptRenderer

    tok, task = ctx.tokenizer, ctx.cfg.task
    if tok is None:
        return [(ctx.model_status, "skipped: no model loaded")]
    try:
        renderer = PromptRenderer.for_task(tok, task, ctx.model_folder)
    except PromptFormatError as exc:
        return [("fail", str(exc))]
    example = ctx.prompts[0] if ctx.prompts else "1+1="
    out = [("ok", f"{task.prompt_format}: {len(renderer.encode(example))} tokens for {example[:40]!r}")]
    warm = ctx.model_folder / "warm_start.json"
    if warm.is_file():
        info = json.loads(warm.read_text())
        was = (info.get("prompt_format"), info.get("system_prompt", ""))
        if was != (task.prompt_format, task.system_prompt):
            out.append(("warn", f"{warm}: the model was warm-started with prompt_format {was[0]!r} and system "
                                f"prompt {was[1]!r}; this run uses {task.prompt_format!r} and "
                                f"{task.system_prompt!r}: a small warm-started model may answer nothing right"))
    return out


def check_sandbox(ctx: Context) -> list[Line]:
    """The sandbox's own self-check (verifiers.sandbox.self_check): a tiny program and a
    tiny test run, the network is blocked, no user namespace can be made, and whether the
    kernel limits (cgroup, seccomp) are there. Failures are fatal only for the code task."""
    from verifiers.sandbox import require, self_check

    cfg = ctx.cfg
    needed = cfg.task.name == "code"
    bad = "fail" if needed else "warn"
    why = "" if needed else " (the code task needs it; this task does not)"
    r = self_check(cfg.verifier.accept_weak_sandbox)
    if not r["ran"]:
        return [(bad, f"mode {r['mode']}: no program ran in the sandbox: {r['error']}{why}")]
    out = [("ok", f"mode {r['mode']}: ran a program and a test (reward {r['test_reward']:g})")
           if r["test_reward"] == 1.0 else (bad, f"mode {r['mode']}: a passing test scored {r['test_reward']:g}{why}")]
    out.append(("ok", "network blocked (tcp4, tcp6), no user namespace") if r["network_blocked"] and r["userns_blocked"]
               else ("fail", f"the sandbox is open: network blocked {r['network_blocked']}, "
                             f"user namespace blocked {r['userns_blocked']}"))
    if r["complete"]:
        out.append(("ok", f"kernel limits: cgroup {r['cgroup']}, seccomp"))
    else:
        try:
            strength = require(cfg.verifier.accept_weak_sandbox)
            out.append(("warn", f"weak sandbox accepted ({strength}): missing " + "; ".join(r["missing"])))
        except Exception as exc:  # noqa: BLE001 - SandboxUnavailable, reported as the check's result
            out.append((bad, f"{exc}{why}"))
    return out


def check_ports(ctx: Context) -> list[Line]:
    import zmq

    hub, out = ctx.cfg.hub, []
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(hub.bind)
        out.append(("ok", f"hub address {hub.bind} bindable ({sock.getsockopt_string(zmq.LAST_ENDPOINT)})"))
    except zmq.ZMQError as exc:
        out.append(("fail", f"hub address {hub.bind} cannot be bound: {exc} ([hub] bind)"))
    finally:
        sock.close(0)
    family = socket.AF_INET6 if ":" in hub.metrics_addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((hub.metrics_addr, hub.metrics_port))
            out.append(("ok", f"metrics {hub.metrics_addr}:{hub.metrics_port or s.getsockname()[1]} bindable"
                              + (" (port 0: a free one is picked at start)" if not hub.metrics_port else "")))
        except OSError as exc:
            out.append(("fail", f"metrics port {hub.metrics_addr}:{hub.metrics_port} cannot be bound: "
                                f"{exc.strerror} ([hub] metrics_port, metrics_addr)"))
    return out


def check_disk(ctx: Context) -> list[Line]:
    cfg = ctx.cfg
    if not ctx.model_bytes:
        return [(ctx.model_status, "skipped: model size unknown (no model loaded)")]
    # snapshots + checkpoint (model + two AdamW moments) + final model, all fp32
    need = ctx.model_bytes * (cfg.learner.keep_snapshots + SNAPSHOT_SPARE + 3 + 1)
    where = ctx.run_dir
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    detail = f"{free / 2**30:.1f} GiB free at {where}, a run writes ~{need / 2**30:.2f} GiB"
    if free < need:
        return [("fail", detail + " (lower [learner] keep_snapshots or free space)")]
    return [("warn" if free < DISK_MARGIN * need else "ok", detail)]


def check_engines(ctx: Context) -> list[Line]:
    import torch

    cfg, out = ctx.cfg, []
    if cfg.actor.engine == "vllm":
        try:
            import vllm

            out.append(("ok", f"vllm {vllm.__version__} imports"))
        except Exception as exc:  # noqa: BLE001 - reported as the check's result
            out.append(("fail", f"[actor] engine = vllm, but vllm does not import: {exc}"))
    cuda_wanted = [f"[{s}] device" for s, dev in (("learner", cfg.learner.device), ("actor", cfg.actor.device))
                   if dev == "cuda"]
    if cuda_wanted and not torch.cuda.is_available():
        out.append(("fail", f"{' and '.join(cuda_wanted)} = cuda, but CUDA is not available"))
    elif cuda_wanted or (cfg.learner.device == "auto" and torch.cuda.is_available()):
        bf16 = cfg.learner.bf16 and not torch.cuda.is_bf16_supported()
        out.append(("warn", "CUDA works, but this GPU has no bf16: set [learner] bf16 = false") if bf16
                   else ("ok", f"CUDA works ({torch.cuda.get_device_name(0)})"))
    return out or [("ok", f"engine {cfg.actor.engine} on {cfg.actor.device}, learner on {cfg.learner.device}: "
                          "nothing to check")]


CHECKS: list[tuple[str, Callable[[Context], list[Line]]]] = [
    ("config", check_config), ("system", check_system), ("model", check_model), ("data", check_data),
    ("tokenizer", check_tokenizer), ("prompts", check_prompt_format), ("sandbox", check_sandbox),
    ("ports", check_ports), ("disk", check_disk), ("engines", check_engines),
]


def doctor(config_path: str | None, overrides: dict, run_dir: Path | None, out=sys.stdout) -> int:
    """Print one line per check and a verdict; 1 if any check failed, else 0."""
    from deploy.cli import DEFAULT_CONFIG

    ctx = Context(str(config_path or DEFAULT_CONFIG), overrides, Path(run_dir or "runs"))
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for name, check in CHECKS:
        if ctx.cfg is None and name != "config":
            break  # every other check reads the config
        for status, detail in check(ctx):
            counts[status] += 1
            print(f"{status:<4}  {name:<9}  {detail}", file=out, flush=True)
    verdict = "fail" if counts["fail"] else "warn" if counts["warn"] else "ok"
    summary = f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"
    advice = ("fix the config first; the other checks need it" if ctx.cfg is None
              else "fix the failures above before `scca run`" if counts["fail"] else "ready to run")
    print(f"{verdict:<4}  {'verdict':<9}  {summary}: {advice}", file=out, flush=True)
    return 1 if counts["fail"] else 0
