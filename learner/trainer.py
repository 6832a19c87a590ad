"""The trainer thread: scored groups -> credit -> off-policy GRPO loss -> AdamW step -> weights (DESIGN §5).

What it does, once per step, each phase a named, timed call:
  collect (prompts_per_step scored groups with signal and lag <= max_lag from the hub; a
  group without signal or too stale is dropped as it arrives, so every step trains a full
  batch, as the one-process loop of bench/pipeline.py does)
  -> forward_backward (advantages, credit weights, token-mean loss over micro-batches)
  -> optimizer step -> publish (safetensors snapshot in the start folder's dtype, digest +
  canary of those rounded values to the hub)
  -> evaluate (every `eval_every` versions, through the actors) -> checkpoint -> log.
One optimiser step per batch, so π_prox (the policy at the start of the update) equals
π_θ before the step: `logp_prox = logp.detach()` is that same forward pass, not a second.

A stop request (SIGINT/SIGTERM, a stall) is honoured where the trainer waits — for
groups, or for an evaluation — never between an optimiser step and the ledger marking its
groups trained, and the trainer then checkpoints the step it reached, so a resumed run
neither loses nor repeats a step. A full disk skips a publish (learner/snapshots.py).

What it does not do: it never touches sockets (it calls the hub through the event loop),
never sees peers, and does not run several PPO epochs per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from learner import metrics as M
from learner.checkpoint import save_checkpoint
from learner.credit.step import CreditStep
from learner.screening import fresh_enough
from learner.snapshots import SnapshotPublisher
from learner.update import flatten_groups, policy_update
from protocol.tokens import pad_id
from protocol.weights import canary_logprob, save_model, saved_precision

log = logging.getLogger("scca.trainer")

COLLECT_POLL_S = 0.2  # how often a waiting collect checks for a stop request


class Stopped(Exception):
    """The run was asked to stop while the trainer waited."""


class Trainer(threading.Thread):
    def __init__(self, cfg, model, tokenizer, optimizer, hub, loop, run_dir: Path, inbox: queue.Queue, state: dict,
                 renderer, publisher: SnapshotPublisher | None = None, broadcaster=None):
        super().__init__(name="trainer", daemon=True)
        self.cfg, self.model, self.tok, self.opt = cfg, model, tokenizer, optimizer
        self.renderer = renderer  # protocol.prompts.PromptRenderer: the run's prompt format
        self.pad_id = pad_id(tokenizer)
        self.dtype = getattr(torch, state.get("save_dtype", "float32"))  # of snapshots and final_model
        self.hub, self.loop, self.run_dir, self.inbox = hub, loop, Path(run_dir), inbox
        self.state = state  # step, version, samples_trained, heldout_before, wall_before
        self.broadcaster = broadcaster  # protocol.weights_broadcast.Sender, or None (file snapshots only)
        self.stop_event = threading.Event()
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self.credit = CreditStep(cfg.credit, model, tokenizer, seed=cfg.learner.seed, encode=renderer.encode,
                                 temperature=cfg.actor.temperature, top_p=cfg.actor.top_p)
        if state.get("credit"):  # resumed: λ schedule, solution bank and credit RNG go on where they were
            self.credit.load_state_dict(state["credit"])
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self.publisher = publisher or SnapshotPublisher(cfg.learner.keep_snapshots)
        self.stale_in_step = 0  # groups dropped as stale while the current step collected
        self.last_row: dict | None = None  # the last metrics row (progress lines read it)
        self.on_row = None  # called on the hub's loop with every metrics row (the watch's progress line)
        self.t_start = time.perf_counter()

    # --- thread body -------------------------------------------------------------
    def run(self) -> None:
        try:
            self.train()
        except Stopped:
            log.info("trainer stopped at step %d: checkpointing it", self.state["step"])
            self.state["wall_seconds"] = self.state.get("wall_before", 0.0) + time.perf_counter() - self.t_start
            self.save_checkpoint()
        except BaseException as exc:  # surfaced to the service, which exits non-zero
            log.exception("trainer failed")
            self.error = exc
        finally:
            self.metrics_file.close()
            self.loop.call_soon_threadsafe(self.done.set)

    def call_hub(self, coro, interruptible: bool = True):
        """Run a coroutine on the hub's loop and wait for it (a stop request interrupts the
        wait unless `interruptible` is False: publishing and ledger marks always finish)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return fut.result(timeout=COLLECT_POLL_S)
            except concurrent.futures.TimeoutError:
                if interruptible and self.stop_event.is_set():
                    fut.cancel()
                    raise Stopped from None

    def train(self) -> None:
        t_start = self.t_start = time.perf_counter()
        if self.state.get("heldout_before") is None:
            t = time.perf_counter()
            self.state["heldout_before"] = self.evaluate()
            self.state["eval_seconds"] = time.perf_counter() - t  # includes waiting for the first actors
            self.log_row({"step": 0, "version": self.state["version"], "heldout_accuracy": self.state["heldout_before"],
                          "wall": self.state["eval_seconds"], "time_eval": self.state["eval_seconds"],
                          "eval_seconds": self.state["eval_seconds"]})
        while not self.budget_spent():
            self.step(t_start)
        self.loop.call_soon_threadsafe(self.hub.stop_training)
        if self.state.get("last_eval_version") == self.state["version"]:
            self.state["heldout_after"] = self.state["last_eval"]
        else:
            self.state["heldout_after"] = self.evaluate()
            self.log_row({"step": self.state["step"], "version": self.state["version"],
                          "heldout_accuracy": self.state["heldout_after"]})
        self.state["wall_seconds"] = self.state.get("wall_before", 0.0) + time.perf_counter() - t_start
        self.save_checkpoint()
        save_model(self.model, self.run_dir / "final_model", self.dtype)
        self.tok.save_pretrained(self.run_dir / "final_model")

    def budget_spent(self) -> bool:
        if self.stop_event.is_set():
            raise Stopped
        return self.budget_reached()

    def budget_reached(self) -> bool:
        lc = self.cfg.learner
        if lc.max_samples and self.state["samples_trained"] >= lc.max_samples:
            return True
        return self.state["step"] >= lc.max_steps

    # --- one step ----------------------------------------------------------------
    def step(self, t_start: float) -> None:
        times = {}
        t = t_step = time.perf_counter()
        fresh = self.collect(self.cfg.learner.prompts_per_step)
        times["collect"] = time.perf_counter() - t
        t = time.perf_counter()
        stats = self.forward_backward(fresh)
        times["forward_backward"] = time.perf_counter() - t
        self.state["step"] += 1
        self.state["version"] += 1
        self.state["samples_trained"] += sum(len(g.samples) for g in fresh)
        t = time.perf_counter()
        if self.publish_due():
            self.publish()
        times["publish"] = time.perf_counter() - t
        self.call_hub(self._mark([g.item_id for g in fresh], []), interruptible=False)
        row = self.step_row(fresh, stats, times, t_start)
        M.observe_step(row)
        try:
            self.after_step(row)
        except Stopped:  # the step itself is done: keep its row, then checkpoint it
            self.log_row(row)
            raise
        row["time_step"] = time.perf_counter() - t_step
        self.state["eval_seconds"] = self.state.get("eval_seconds", 0.0) + row.get("time_eval", 0.0)
        row["eval_seconds"] = self.state["eval_seconds"]  # all evaluations so far (wall minus this = training wall)
        self.log_row(row)

    def step_row(self, fresh: list, stats: dict, times: dict, t_start: float) -> dict:
        row = {
            "step": self.state["step"], "version": self.state["version"],
            "samples_trained": self.state["samples_trained"], "groups": len(fresh),
            "dropped_stale": self.stale_in_step,  # groups past max_lag dropped while this step collected
            "samples_generated": self.hub.samples_generated,  # this learner process's count (not kept across resume)
            "dropped_no_signal_total": self.state.get("dropped_no_signal", 0),
            "reward_mean": float(np.mean(self.seen_rewards)),  # all verified samples, incl. dropped groups
            "reward_mean_trained": float(np.mean([r for g in fresh for r in g.rewards])),
            "lags": [self.state["version"] - 1 - g.weights_version for g in fresh],
            "wall": self.state.get("wall_before", 0.0) + time.perf_counter() - t_start, "time": time.time(),
            **stats, **{f"time_{k}": v for k, v in times.items()},
        }
        row["samples_per_s"] = self.state["samples_trained"] / max(row["wall"], 1e-9)
        return row

    def after_step(self, row: dict) -> None:
        """Evaluate, credit heatmap, checkpoint: each when due, each timed into the row."""
        if self.eval_due():
            t = time.perf_counter()
            row["heldout_accuracy"] = self.evaluate()
            row["time_eval"] = time.perf_counter() - t
        if self.credit.last is not None and (self.state["step"] % 10 == 0 or self.budget_reached()):
            self.credit.write_html(self.run_dir / "credit.html", f"{self.cfg.credit.method}, step {self.state['step']}")
        if self.state["step"] % self.cfg.learner.checkpoint_every == 0:
            t = time.perf_counter()
            self.save_checkpoint()
            row["time_checkpoint"] = time.perf_counter() - t

    def save_checkpoint(self) -> None:
        """Model, optimiser, run state and the credit state (λ schedule, solution bank, RNG)."""
        save_checkpoint(self.run_dir / "checkpoint", self.model, self.tok, self.opt,
                        {**self.state, "credit": self.credit.state_dict()}, self.hub.cursor)

    def eval_due(self) -> bool:
        return bool(self.cfg.learner.eval_every) and self.state["step"] % self.cfg.learner.eval_every == 0

    def publish_due(self) -> bool:
        """Every `publish_every` steps, and whenever the actors must hold this version: before an
        evaluation (it runs on the actors) and at the end of the budget."""
        return self.state["step"] % self.cfg.learner.publish_every == 0 or self.eval_due() or self.budget_reached()

    async def _mark(self, item_ids: list[str], dropped: list[tuple[str, str]]) -> None:
        self.hub.mark_trained(item_ids, dropped, self.state["version"])
        await self.hub.pump()  # dropped or trained rows free the dispatch window

    def collect(self, n: int) -> list:
        """n scored groups from the hub that can teach this step. With `drop_no_signal` (DAPO
        dynamic sampling) a group whose rewards are all equal has zero advantage everywhere: it
        is dropped at once (reason `no_signal`) so it neither dilutes the token mean nor holds
        the hub's window. A group generated more than `max_lag` versions ago is dropped at once
        too (reason `stale`): the step waits for a fresh one instead of training fewer groups.
        The version does not change while the trainer collects, so "fresh on arrival" is
        "fresh when trained"."""
        groups = []
        self.seen_rewards: list[float] = []  # every verified sample of this step, kept or dropped
        self.stale_in_step = 0
        while len(groups) < n:
            g = self.next_group()
            self.seen_rewards.extend(g.rewards)
            reason = self.drop_reason(g)
            if reason is None:
                groups.append(g)
                continue
            if reason == "no_signal":
                self.state["dropped_no_signal"] = self.state.get("dropped_no_signal", 0) + 1
            else:
                self.stale_in_step += 1
            self.call_hub(self._mark([], [(g.item_id, reason)]), interruptible=False)
        return groups

    def next_group(self):
        """The next scored group from the hub; republishes a refused snapshot while it waits."""
        while True:
            if self.stop_event.is_set():
                raise Stopped
            if self.hub.republish.is_set():  # an actor refused the newest snapshot (learner/hub.py)
                self.hub.republish.clear()
                log.warning("an actor refused the newest snapshot: publishing v%d again", self.state["version"])
                self.publish()
            try:
                return self.inbox.get(timeout=COLLECT_POLL_S)
            except queue.Empty:
                continue

    def drop_reason(self, g) -> str | None:
        """Why group g cannot train this step (`no_signal`, `stale`), or None."""
        if self.cfg.loss.drop_no_signal and len(set(g.rewards)) == 1:
            return "no_signal"
        if not fresh_enough(self.state["version"], g, self.cfg.loss.max_lag):
            return "stale"
        return None

    def forward_backward(self, groups: list) -> dict:
        """Advantages -> credit weights -> token-mean loss over length-bucketed micro-batches
        -> one clipped AdamW step (learner/update.py)."""
        lc = self.cfg.learner
        flat = flatten_groups(groups, self.renderer.encode, std_normalize=self.cfg.loss.std_normalize)
        t = time.perf_counter()
        with torch.no_grad():
            w_all, credit_stats = self.credit.weights(groups, flat.completions, flat.adv, self.state["step"])  # [N,Tmax]
        credit_stats["time_credit"] = time.perf_counter() - t
        stats = policy_update(self.model, self.opt, flat, w_all, loss_cfg=self.cfg.loss, micro_batch=lc.micro_batch,
                              grad_clip=lc.grad_clip, pad_id=self.pad_id, bf16=lc.bf16,
                              temperature=self.cfg.actor.temperature, top_p=self.cfg.actor.top_p)
        return {**stats, **credit_stats}

    def publish(self) -> None:
        info = self.publisher.publish(self.run_dir / "weights", self.state["version"], self.model, self.tok,
                                      dtype=self.dtype)
        if info is None:  # disk full: the previous snapshot keeps serving
            return
        with saved_precision(self.model, self.dtype):  # the values actors load
            canary = canary_logprob(self.model, self.tok)
        self.call_hub(self.hub.publish(info, canary), interruptible=False)
        if self.broadcaster is not None:  # the same version to the actors in the group, proved the same way
            self.broadcaster.offer_model(self.state["version"], self.model.state_dict().items(), self.dtype)

    def evaluate(self) -> float:
        """Held-out accuracy; every evaluation's rewards per prompt go to heldout.jsonl
        (paired comparisons between runs need them prompt by prompt)."""
        acc, rewards = self.call_hub(self.hub.evaluate())
        with open(self.run_dir / "heldout.jsonl", "a") as f:
            f.write(json.dumps({"step": self.state["step"], "version": self.state["version"], "accuracy": acc,
                                "samples_per_prompt": self.cfg.learner.eval_samples, "rewards": rewards}) + "\n")
        self.state["last_eval"], self.state["last_eval_version"] = acc, self.state["version"]
        log.info("held-out accuracy at v%d: %.3f", self.state["version"], acc)
        return acc

    def log_row(self, row: dict) -> None:
        self.metrics_file.write(json.dumps(row) + "\n")
        self.last_row = row
        if self.on_row is not None:
            self.loop.call_soon_threadsafe(self.on_row, row)
