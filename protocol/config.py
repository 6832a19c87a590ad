"""Run configuration: one TOML file, validated into typed pydantic models (DESIGN §8).

What it does: every section `[model] [task] [learner] [loss] [credit] [actor] [verifier]
[hub]` is a model with `extra="forbid"`, so an unknown or misspelt key is an error that
names it; every field has a description and bounds. `load_config(path)` reads TOML with
stdlib `tomllib`; `RunConfig.resolved_json()` is what gets written into the run folder.

What it does not do: it does not touch the file system beyond reading the TOML, start
anything, or fill in paths that depend on the run folder (the launcher does that).
"""

from __future__ import annotations

import json
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
    terms: int = Field(3, ge=2, le=32, description="arith only: terms per problem (10 one-digit terms: ~70-character chains).")
    digits: int = Field(2, ge=1, le=6, description="arith only: digits per term (1 = terms 0..9).")

    @model_validator(mode="after")
    def _arith_keys(self) -> "TaskConfig":
        given = {"terms", "digits"} & self.model_fields_set
        if given and self.name != "arith":
            raise ValueError(f"{', '.join(sorted(given))} apply to task 'arith' only, not {self.name!r}")
        return self

    def generator_kwargs(self) -> dict:
        """Keyword arguments of the procedural task's `generate` beyond (seed, n, split)."""
        return {"n_terms": self.terms, "digits": self.digits} if self.name == "arith" else {}


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
    micro_batch: int = Field(64, ge=1, le=4096, description="Samples per forward/backward micro-batch.")
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
    weights_dir: str = Field(
        "",
        description="Empty: read snapshots from the learner's folder (shared filesystem). "
        "Else: fetch them over the wire into this folder (no shared filesystem needed).",
    )


class VerifierConfig(_Section):
    """Verifier services."""

    count: int = Field(1, ge=0, le=64, description="Verifiers `scca run` starts on this machine.")
    slots: int = Field(4, ge=1, le=1024, description="Jobs a verifier accepts at once.")
    job_timeout_s: float = Field(30.0, gt=0, le=3600, description="A verify job past this gets reward 0, reason timeout.")


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

    def resolved_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the problem."""


def parse_config(data: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"[{where}] {what}")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read a TOML file, or the resolved JSON a run folder holds (plus nested `overrides`,
    e.g. {"learner": {"max_steps": 5}})."""
    with open(path, "rb") as f:
        try:
            data = json.load(f) if str(path).endswith(".json") else tomllib.load(f)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid {'JSON' if str(path).endswith('.json') else 'TOML'}: {exc}") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)
