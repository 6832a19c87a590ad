"""Run configuration: one TOML file, validated into typed pydantic models (DESIGN §8).

What it does: every section `[model] [task] [learner] [loss] [credit] [actor] [verifier]
[hub] [monitor]` is a model with `extra="forbid"`, so an unknown or misspelt key is an error that
names it (with the file and line where the key stands); every field has a description
and bounds. `load_config(path)` reads TOML with
stdlib `tomllib`; `RunConfig.resolved_json()` is what gets written into the run folder.

What it does not do: it does not touch the file system beyond reading the TOML, start
anything, or fill in paths that depend on the run folder (the launcher does that).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocol.credit_methods import CREDIT_METHODS, REFERENCE_TEMPLATE


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """Which policy model to start from."""

    folder: str = Field(
        "",
        description="Hugging Face model folder to start from; empty = the bootstrap model "
        "(built by `scca bootstrap` into `bootstrap_dir`).",
    )
    bootstrap_dir: str = Field(".cache/scca/bootstrap-s0", description="Where `scca bootstrap` caches the tiny model.")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the bootstrap model.")
    bootstrap_reference_fraction: float = Field(
        0.2, ge=0, le=1,
        description="Share of each bootstrap SFT batch that sees the problem's own solution in its context "
        "(teaches the model to condition on a reference, which the self-teacher relies on).",
    )
    bootstrap_reference_target: float = Field(
        0.0, ge=0, le=1,
        description="The bootstrap stops only once its greedy accuracy with the correct solution in context is at "
        "least this (0 = no such bar; credit round 3 uses 0.8).",
    )


class TaskConfig(_Section):
    """What the policy is trained on."""

    name: Literal["arith", "countdown", "math", "code"] = Field("arith", description="Task / scorer name.")
    train_file: str = Field("", description="JSONL of training prompts; empty = generated procedurally into the run folder.")
    heldout_file: str = Field("", description="JSONL of held-out prompts; empty = generated procedurally.")
    train_size: int = Field(50_000, ge=1, le=10_000_000, description="Procedural training prompts generated.")
    heldout_size: int = Field(500, ge=1, le=100_000, description="Held-out prompts for evaluation.")
    seed: int = Field(0, ge=0, description="Seed of the procedural generator (fixes the held-out split).")
    rel_tol: float = Field(
        1e-9, ge=0, le=0.1,
        description="Relative tolerance when `math` and `code` compare numbers (math.isclose); a row's own "
        "`rel_tol` overrides it; every verdict records the tolerance it used.",
    )
    abs_tol: float = Field(0.0, ge=0, le=1.0, description="Absolute tolerance of those comparisons (with rel_tol).")
    prompt_format: Literal["raw", "chat"] = Field(
        "raw", description="How a prompt becomes token ids (protocol/prompts.py): raw = the text as is; chat = the "
        "tokenizer's chat template with the generation prompt (an instruct model needs it).")
    system_prompt: str = Field("", max_length=8192, description="System turn of the chat format (empty: the template's default).")
    chat_template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict, max_length=16,
        description="Variables of the chat template, passed to apply_chat_template (chat format only), e.g. "
        "{enable_thinking = false} for Qwen3 (no thinking block); scca's own arguments (tokenize, "
        "add_generation_prompt, ...) are refused.")
    max_prompt_tokens: int = Field(
        0, ge=0, le=1_000_000,
        description="Longest prompt in tokens after formatting; 0 = the model's context minus actor.max_new_tokens.")
    long_prompts: Literal["error", "drop"] = Field(
        "error", description="A prompt over max_prompt_tokens: error (names the file and line) or drop and count it; "
        "never truncated.")
    prompt_field: str = Field(
        "", max_length=128, description="Data field holding the prompt (a string or chat messages; a dotted name reads "
        "into nested fields); empty = the first of prompt, question, problem.")
    answer_field: str = Field(
        "", max_length=128,
        description="Data field holding the answer (math; code: the tests); empty = the first of answer, solution, "
        "ground_truth, reward_model.ground_truth (verl); a dotted name reads into nested fields. A '#### x' "
        "line (GSM8K) or the last \\boxed{x} (MATH) in it is the gold answer; the whole text is kept as the solution.")
    reward: str = Field(
        "", max_length=256, pattern=r"^$|^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="Plug-in reward 'package.module:function', called as function(prompt, completion, meta) -> float "
        "| dict with 'reward' in the verifier's workers (same timeout, cache, stamping); empty = the task's scorer.")

    terms: int = Field(3, ge=2, le=32, description="arith only: terms per problem (10 one-digit terms: ~70-character chains).")
    digits: int = Field(2, ge=1, le=6, description="arith only: digits per term (1 = terms 0..9).")

    @model_validator(mode="after")
    def _arith_keys(self) -> "TaskConfig":
        fields = type(self).model_fields
        given = {k for k in ("terms", "digits") if getattr(self, k) != fields[k].default}  # a resolved config.json names every key
        if given and self.name != "arith":
            raise ValueError(f"{', '.join(sorted(given))} apply to task 'arith' only, not {self.name!r}")
        return self

    def generator_kwargs(self) -> dict:
        """Keyword arguments of the procedural task's `generate` beyond (seed, n, split)."""
        return {"n_terms": self.terms, "digits": self.digits} if self.name == "arith" else {}

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self):
        if self.system_prompt and self.prompt_format != "chat":
            raise ValueError("system_prompt needs prompt_format = 'chat'")
        if self.chat_template_kwargs and self.prompt_format != "chat":
            raise ValueError("chat_template_kwargs needs prompt_format = 'chat'")
        return self


class LearnerConfig(_Section):
    """The trainer: optimisation, budget, snapshots and checkpoints."""

    lr: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate (DESIGN §6 calibration: 1e-4).")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    prompts_per_step: int = Field(16, ge=1, le=4096, description="Prompt groups per optimiser step.")
    max_steps: int = Field(100, ge=0, le=1_000_000, description="Budget in optimiser steps.")
    max_samples: int = Field(0, ge=0, description="Budget in trained samples; 0 = only max_steps counts.")
    max_in_flight: int = Field(
        0, ge=0, le=1_000_000,
        description="Prompt groups dispatched but not yet trained or dropped; 0 = prompts_per_step x (max_lag + 1), "
        "doubled with drop_no_signal.",
    )
    micro_batch: int = Field(64, ge=1, le=4096, description="Samples per forward/backward micro-batch (rows sorted by length).")
    screen_samples: int = Field(
        4, ge=0, le=255,
        description="SPEED screening: draw this many samples of a prompt first and the rest of the group only if "
        "their rewards differ (else the prompt is dropped as `screened`); 0, or >= actor.group_size, = off. "
        "Only with loss.drop_no_signal (a run that trains groups without signal screens nothing).",
    )
    threads: int = Field(1, ge=1, le=256, description="torch threads of the learner process.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Learner device; auto = cuda when available.")
    bf16: bool = Field(True, description="bf16 autocast for the learner's forward passes on CUDA (weights stay fp32).")
    eval_every: int = Field(25, ge=0, description="Held-out evaluation every N steps (0 = only before and after).")
    eval_samples: int = Field(
        1, ge=1, le=64,
        description="Samples per held-out prompt: 1 = greedy accuracy; k > 1 = mean accuracy of k samples at the "
        "actors' temperature/top_p (pass@1 estimated from k; steadier than greedy on a weak model).",
    )
    keep_snapshots: int = Field(3, ge=1, le=1000, description="Weight snapshots kept on disk.")
    broadcast_world_size: int = Field(
        0, ge=0, le=65536,
        description="torch.distributed weights broadcast (protocol/weights_broadcast.py): 0 = off (file snapshots "
        "only); W >= 2 = the learner (rank 0) and W - 1 actors with [actor] broadcast_rank 1..W-1 form one group "
        "(gloo on CPU, NCCL on CUDA). Snapshots are still written (the default path, resume, other actors).",
    )
    broadcast_port: int = Field(0, ge=0, le=65535, description="TCPStore port of the broadcast group (0 = pick a free one; actors learn it from `welcome`).")
    publish_every: int = Field(
        1, ge=1, le=100_000,
        description="Publish weights every k steps (and before every evaluation and at the end); groups then lag "
        "up to k - 1 versions more, so loss.max_lag must be >= k - 1.",
    )
    checkpoint_every: int = Field(25, ge=1, description="Checkpoint (model + optimizer + ledger position) every N steps.")
    seed: int = Field(0, ge=0, description="Seed of the learner (data order, init of the optimizer).")


class LossConfig(_Section):
    """Off-policy-corrected GRPO (DESIGN §5)."""

    std_normalize: bool = Field(True, description="GRPO advantage divides by the group std (False = Dr. GRPO).")
    eps_low: float = Field(0.2, gt=0, lt=1, description="Lower PPO clip ε_low.")
    eps_high: float = Field(0.28, gt=0, le=10, description="Upper PPO clip ε_high (clip-higher).")
    dual_clip: float = Field(3.0, gt=1, description="Dual-clip constant c for negative advantages.")
    is_cap: float = Field(2.0, ge=1, description="Truncation C of the importance weight π_prox/μ.")
    max_lag: int = Field(1, ge=0, le=1000, description="Groups older than this many versions are dropped (0 = on-policy).")
    drop_no_signal: bool = Field(
        True, description="Drop groups whose rewards are all equal (zero advantage) instead of training on them (DAPO dynamic sampling)."
    )


class CreditConfig(_Section):
    """Token credit (DESIGN §6): `uniform` is plain GRPO; the others reweight tokens.

    `method` names an entry of `protocol.credit_methods.CREDIT_METHODS` (the one registry)."""

    method: str = Field("uniform", description="Credit variant: a name in protocol/credit_methods.py CREDIT_METHODS.")
    lam_max: float = Field(0.5, ge=0, le=1, description="λ_max of the `ramp` schedule: w = (1 - λ) + λ u; 0 = uniform.")
    warmup_steps: int = Field(10, ge=0, description="Steps with λ = 0 before the ramp.")
    ramp_steps: int = Field(20, ge=0, description="Steps of the linear ramp from 0 to λ_max.")
    gate_ratio: float = Field(1.2, ge=0, description="λ stays 0 while EMA of mean s(incorrect)/mean s(correct) is below this (0 = no gate).")
    decay_from: float = Field(0.5, ge=0, le=1, description="λ at step 0 of the `decay` schedule (RLSD: 0.5).")
    decay_steps: int = Field(50, ge=1, description="Steps over which the `decay` schedule takes λ linearly to 0 (RLSD: 50).")
    template: str = Field(REFERENCE_TEMPLATE, description="Teacher context template ({c}, {prompt}).")
    allow_identical_context: bool = Field(
        True, description="A sibling whose text equals the sample's may be its context (arith: all correct answers are one string)."
    )
    teacher_micro_batch: int = Field(32, ge=1, le=4096, description="Rows per teacher forward pass.")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in CREDIT_METHODS:
            raise ValueError(f"unknown credit method {v!r}; known: {', '.join(CREDIT_METHODS)}")
        return v

    @field_validator("template")
    @classmethod
    def _template_fields(cls, v: str) -> str:
        try:
            v.format(c="", prompt="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template may use only {{c}} and {{prompt}}: {exc!r}") from None
        return v


class ActorConfig(_Section):
    """Generation actors."""

    count: int = Field(2, ge=0, le=64, description="Actors `scca run` starts on this machine.")
    engine: Literal["hf", "vllm"] = Field("hf", description="Generation engine: hf or vllm (needs vllm).")
    group_size: int = Field(8, ge=2, le=256, description="Samples per prompt (GRPO group).")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling; 1.0 keeps the behaviour logprobs exact.")
    max_new_tokens: int = Field(48, ge=1, le=8192, description="Completion length cap.")
    slots: int = Field(8, ge=1, le=1024, description="Prompt groups an actor asks for at once (credit).")
    threads: int = Field(1, ge=1, le=256, description="torch threads per actor process.")
    batch_size: int = Field(64, ge=1, le=4096, description="Rows per generate() call.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Actor engine device (hf: cpu/cuda; vllm: auto).")
    stop: list[str] = Field(
        [], max_length=16, description="Stop strings: a completion also ends after the token that completes one "
        "(kept in the completion). Every eos id of the tokenizer and generation_config.json always stops.")
    broadcast_rank: int = Field(
        0, ge=0, le=65535,
        description="Rank of this actor in the learner's weights broadcast group (1..W-1, HF engine); 0 = not in it.",
    )
    weights_dir: str = Field(
        "",
        description="Empty: read snapshots from the learner's folder (shared filesystem). "
        "Else: fetch them over the wire into this folder (no shared filesystem needed).",
    )


class VerifierConfig(_Section):
    """Verifier services."""

    count: int = Field(1, ge=0, le=64, description="Verifiers `scca run` starts on this machine.")
    slots: int = Field(4, ge=1, le=1024, description="Jobs a verifier accepts at once.")
    completion_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="A completion whose scoring runs past this (counted from when a scorer worker takes it) gets "
        "reward 0, reason timeout; its siblings are scored on their own.",
    )
    accept_weak_sandbox: bool = Field(
        False,
        description="Run `code` tasks even where the sandbox lacks a kernel limit (no writable cgroup or no "
        "libseccomp); off = the verifier refuses to start for `code` and says what is missing.",
    )


class HubConfig(_Section):
    """The learner's broker: addresses, leases, heartbeats, metrics ports."""

    bind: str = Field("tcp://127.0.0.1:0", description="ROUTER address the learner binds (port 0 = pick a free one).")
    heartbeat_s: float = Field(1.0, gt=0, le=60, description="Heartbeat interval on idle sockets.")
    peer_timeout_s: float = Field(10.0, gt=0, le=3600, description="A peer silent this long is considered gone.")
    work_lease_s: float = Field(120.0, gt=0, le=86400, description="Dispatched work not answered in time is re-dispatched.")
    verify_lease_s: float = Field(60.0, gt=0, le=86400, description="Verify jobs not answered in time are re-sent.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Learner /metrics port (0 = pick a free one).")
    metrics_addr: str = Field(
        "127.0.0.1",
        description="Address every process's /metrics server binds (0.0.0.0 in containers, so Prometheus "
        "on another host can scrape it).",
    )


class MonitorConfig(_Section):
    """Progress lines and stall detection (learner/stall.py). Each stall condition has a
    warning bound (a log line with the numbers and the likely causes) and a stop bound (the
    learner checkpoints and exits with code 3, stop reason `stalled`); 0 disables a bound."""

    progress_every_s: float = Field(
        30.0, gt=0, le=3600,
        description="A plain progress line after every step, and at least this often while no step completes.",
    )
    no_signal_warn_groups: int = Field(
        64, ge=0, le=10_000_000,
        description="Warn after this many consecutive scored groups whose rewards were all equal (no learning signal).",
    )
    no_signal_stop_groups: int = Field(
        1024, ge=0, le=10_000_000,
        description="Stop the run after this many consecutive groups without learning signal (0 = never).",
    )
    no_verified_warn_s: float = Field(
        300.0, ge=0, le=604_800,
        description="Warn when no sample was verified (training or held-out) for this many seconds.",
    )
    no_verified_stop_s: float = Field(
        1800.0, ge=0, le=604_800,
        description="Stop the run when no sample was verified for this many seconds (0 = never).",
    )
    no_peer_warn_s: float = Field(
        60.0, ge=0, le=604_800,
        description="Warn when no live actor, or no live verifier, was connected for this many seconds.",
    )
    no_peer_stop_s: float = Field(
        900.0, ge=0, le=604_800,
        description="Stop the run when no live actor, or no live verifier, was connected for this long (0 = never).",
    )
    publish_failures_stop: int = Field(
        5, ge=1, le=1000,
        description="Stop the run after this many consecutive failed weight publishes (disk full, quota); "
        "the previous snapshot keeps serving meanwhile.",
    )

    @model_validator(mode="after")
    def _stop_after_warn(self):
        for what in ("no_signal", "no_verified", "no_peer"):
            unit = "groups" if what == "no_signal" else "s"
            warn, stop = getattr(self, f"{what}_warn_{unit}"), getattr(self, f"{what}_stop_{unit}")
            if warn and stop and stop <= warn:
                raise ValueError(f"{what}_stop_{unit} ({stop}) must be above {what}_warn_{unit} ({warn}), or 0")
        return self


class RunConfig(_Section):
    """A whole run: the sections of DESIGN §8."""

    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    learner: LearnerConfig = LearnerConfig()
    loss: LossConfig = LossConfig()
    credit: CreditConfig = CreditConfig()
    actor: ActorConfig = ActorConfig()
    verifier: VerifierConfig = VerifierConfig()
    hub: HubConfig = HubConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _cross_section(self) -> "RunConfig":
        rank, world = self.actor.broadcast_rank, self.learner.broadcast_world_size
        if rank and (rank >= world or self.actor.engine != "hf"):
            raise ValueError(f"actor.broadcast_rank ({rank}) needs the hf engine and learner.broadcast_world_size > {rank}")
        k, lag = self.learner.publish_every, self.loss.max_lag
        if lag < k - 1:
            raise ValueError(f"loss.max_lag ({lag}) must be >= learner.publish_every - 1 ({k - 1}): groups generated "
                             f"from a published version are up to {k - 1} versions old when the next one trains")
        return self

    def resolved_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the problem."""


def parse_config(data: dict, source: str | None = None, text: str | None = None,
                 overrides: dict | None = None) -> RunConfig:
    """Validate `data`; a problem is named as `FILE:LINE: [section.key] what` when the key
    can be found in the TOML `text` of `source`, or as `--set section.key` when it came
    from an override."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = ".".join(loc) or "config"  # a rule across sections has no location
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{_origin(loc, source, text, overrides)}[{where}] {what}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None


def _origin(loc: list[str], source: str | None, text: str | None, overrides: dict | None) -> str:
    """'--set a.b ', 'FILE:LINE: ', 'FILE: ' or '' for a validation error at `loc`."""
    if len(loc) >= 2 and loc[1] in (overrides or {}).get(loc[0], {}):
        return f"--set {loc[0]}.{loc[1]}: "
    if source is None:
        return ""
    line = key_line(text, loc) if text is not None and loc else None
    return f"{source}:{line}: " if line else f"{source}: "


def key_line(text: str, loc: list[str]) -> int | None:
    """1-based line of `[section]` key `loc[1]` (or of the section header) in TOML text."""
    section, key = loc[0], (loc[1] if len(loc) > 1 else None)
    current, header = None, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = line.strip("[] ")
            header = n if current == section and header is None else header
        elif key is not None and current == section and line.split("=", 1)[0].strip().strip('"') == key:
            return n
        elif key is not None and current is None and line.split("=", 1)[0].strip() == f"{section}.{key}":
            return n
    return header


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a TOML file, or the resolved JSON a run folder holds (plus nested `overrides`,
    e.g. {"learner": {"max_steps": 5}}). Every problem is a ConfigError naming the file
    (and the line where it can be found)."""
    is_json = str(path).endswith(".json")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc}") from None
    try:
        data = json.loads(text) if is_json else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = m.group(1) if m else len(text.splitlines())  # "at end of document": the last line
        raise ConfigError(f"{path}:{line}: not valid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{path}: [{section}] is not a table, cannot apply --set {section}.*")
        data.setdefault(section, {}).update(values)
    return parse_config(data, str(path), None if is_json else text, overrides)
