"""The trainer thread: scored groups -> credit -> off-policy GRPO loss -> AdamW step -> weights (DESIGN §5).

What it does, once per step, each phase a named, timed call:
  collect (prompts_per_step scored groups from the hub) -> drop_stale (lag > max_lag)
  -> forward_backward (advantages, credit weights, token-mean loss over micro-batches)
  -> optimizer step -> publish (safetensors snapshot, digest + canary to the hub)
  -> evaluate (every `eval_every` versions, through the actors) -> checkpoint -> log.
One optimiser step per batch, so π_prox (the policy at the start of the update) equals
π_θ before the step: `logp_prox = logp.detach()` is that same forward pass, not a second.

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
from learner.credit import token_advantages
from learner.credit.step import CreditStep
from learner.logprobs import build_batch, pad_right, token_logprobs
from learner.loss import group_advantages, lag_ok, policy_loss
from protocol.weights import canary_logprob, publish_snapshot

log = logging.getLogger("scca.trainer")

COLLECT_POLL_S = 0.2  # how often a waiting collect checks for a stop request


class Stopped(Exception):
    """The run was asked to stop while the trainer waited."""


class Trainer(threading.Thread):
    def __init__(self, cfg, model, tokenizer, optimizer, hub, loop, run_dir: Path, inbox: queue.Queue, state: dict):
        super().__init__(name="trainer", daemon=True)
        self.cfg, self.model, self.tok, self.opt = cfg, model, tokenizer, optimizer
        self.hub, self.loop, self.run_dir, self.inbox = hub, loop, Path(run_dir), inbox
        self.state = state  # step, version, samples_trained, heldout_before, wall_before
        self.stop_event = threading.Event()
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self.credit = CreditStep(cfg.credit, model, tokenizer, seed=cfg.learner.seed,
                                 temperature=cfg.actor.temperature, top_p=cfg.actor.top_p)
        if state.get("credit"):  # resumed: λ schedule, solution bank and credit RNG go on where they were
            self.credit.load_state_dict(state["credit"])
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    # --- thread body -------------------------------------------------------------
    def run(self) -> None:
        try:
            self.train()
        except Stopped:
            log.info("trainer stopped at step %d", self.state["step"])
        except BaseException as exc:  # surfaced to the service, which exits non-zero
            log.exception("trainer failed")
            self.error = exc
        finally:
            self.metrics_file.close()
            self.loop.call_soon_threadsafe(self.done.set)

    def call_hub(self, coro):
        """Run a coroutine on the hub's loop and wait for it (a stop request interrupts the wait)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return fut.result(timeout=COLLECT_POLL_S)
            except concurrent.futures.TimeoutError:
                if self.stop_event.is_set():
                    fut.cancel()
                    raise Stopped from None

    def train(self) -> None:
        t_start = time.perf_counter()
        if self.state.get("heldout_before") is None:
            self.state["heldout_before"] = self.evaluate()
            self.log_row({"step": 0, "version": self.state["version"], "heldout_accuracy": self.state["heldout_before"]})
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
        save_checkpoint(self.run_dir / "checkpoint", self.model, self.tok, self.opt,
                        {**self.state, "credit": self.credit.state_dict()}, self.hub.cursor)
        self.model.save_pretrained(self.run_dir / "final_model")
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
        t = time.perf_counter()
        groups = self.collect(self.cfg.learner.prompts_per_step)
        times["collect"] = time.perf_counter() - t
        fresh, stale = self.drop_stale(groups)
        if not fresh:
            self.call_hub(self._mark([], stale))
            return
        t = time.perf_counter()
        stats = self.forward_backward(fresh)
        times["forward_backward"] = time.perf_counter() - t
        self.state["step"] += 1
        self.state["version"] += 1
        self.state["samples_trained"] += sum(len(g.samples) for g in fresh)
        t = time.perf_counter()
        self.publish()
        times["publish"] = time.perf_counter() - t
        self.call_hub(self._mark([g.item_id for g in fresh], stale))
        row = {
            "step": self.state["step"], "version": self.state["version"],
            "samples_trained": self.state["samples_trained"], "groups": len(fresh), "dropped_stale": len(stale),
            "dropped_no_signal_total": self.state.get("dropped_no_signal", 0),
            "reward_mean": float(np.mean(self.seen_rewards)),  # all verified samples, incl. dropped groups
            "reward_mean_trained": float(np.mean([r for g in fresh for r in g.rewards])),
            "lags": [self.state["version"] - 1 - g.weights_version for g in fresh],
            "wall": self.state.get("wall_before", 0.0) + time.perf_counter() - t_start,
            **stats, **{f"time_{k}": v for k, v in times.items()},
        }
        row["samples_per_s"] = self.state["samples_trained"] / max(row["wall"], 1e-9)
        M.observe_step(row)
        if self.cfg.learner.eval_every and self.state["step"] % self.cfg.learner.eval_every == 0:
            row["heldout_accuracy"] = self.evaluate()
        if self.credit.last is not None and (self.state["step"] % 10 == 0 or self.budget_reached()):
            self.credit.write_html(self.run_dir / "credit.html", f"{self.cfg.credit.method}, step {self.state['step']}")
        if self.state["step"] % self.cfg.learner.checkpoint_every == 0:
            save_checkpoint(self.run_dir / "checkpoint", self.model, self.tok, self.opt,
                            {**self.state, "credit": self.credit.state_dict()}, self.hub.cursor)
        self.log_row(row)

    async def _mark(self, item_ids: list[str], stale: list[tuple[str, str]]) -> None:
        self.hub.mark_trained(item_ids, stale, self.state["version"])
        await self.hub.pump()  # dropped or trained rows free the dispatch window

    def collect(self, n: int) -> list:
        """n scored groups from the hub. With `drop_no_signal` (DAPO dynamic sampling) a group
        whose rewards are all equal has zero advantage everywhere: it is dropped at once
        (reason `no_signal`) so it neither dilutes the token mean nor holds the hub's window."""
        groups = []
        self.seen_rewards: list[float] = []  # every verified sample of this step, kept or dropped
        while len(groups) < n:
            if self.stop_event.is_set():
                raise Stopped
            try:
                g = self.inbox.get(timeout=COLLECT_POLL_S)
            except queue.Empty:
                continue
            self.seen_rewards.extend(g.rewards)
            if self.cfg.loss.drop_no_signal and len(set(g.rewards)) == 1:
                self.state["dropped_no_signal"] = self.state.get("dropped_no_signal", 0) + 1
                self.call_hub(self._mark([], [(g.item_id, "no_signal")]))
                continue
            groups.append(g)
        return groups

    def drop_stale(self, groups: list) -> tuple[list, list[tuple[str, str]]]:
        fresh, stale = [], []
        for g in groups:
            if lag_ok(self.state["version"], g.weights_version, self.cfg.loss.max_lag):
                fresh.append(g)
            else:
                stale.append((g.item_id, "stale"))
        return fresh, stale

    def forward_backward(self, groups: list) -> dict:
        """Advantages -> credit weights -> token-mean loss over micro-batches -> one clipped AdamW step."""
        lc, loss_cfg = self.cfg.learner, self.cfg.loss
        prompt_ids, completions, behav, adv = [], [], [], []
        for g in groups:
            ids = self.tok(g.prompt)["input_ids"]
            a = group_advantages(torch.tensor(g.rewards, dtype=torch.float32), std_normalize=loss_cfg.std_normalize)
            for s, a_i in zip(g.samples, a.tolist()):
                prompt_ids.append(ids)
                completions.append(s["token_ids"].tolist())
                behav.append(s["logprobs"])
                adv.append(a_i)
        adv_all = torch.tensor(adv, dtype=torch.float32)  # [N]
        with torch.no_grad():
            w_all, credit_stats = self.credit.weights(groups, completions, adv_all, self.state["step"])  # [N,Tmax]
        dev = next(self.model.parameters()).device
        adv_all, w_all = adv_all.to(dev), w_all.to(dev)
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" and lc.bf16)
        total_tokens = sum(len(c) for c in completions)
        self.model.train()
        sums: dict[str, float] = {}
        loss_total = 0.0
        for lo in range(0, len(completions), lc.micro_batch):
            hi = lo + lc.micro_batch
            batch = build_batch(prompt_ids[lo:hi], completions[lo:hi], self.tok.pad_token_id)
            with autocast:  # bf16 matmuls on CUDA; token_logprobs' log_softmax stays fp32
                logp, mask, _ = token_logprobs(self.model, batch, temperature=self.cfg.actor.temperature,
                                               top_p=self.cfg.actor.top_p)  # [b,T], [b,T]: the actors' distribution
            T = logp.shape[1]
            logp_behav = pad_right(behav[lo:hi], T, 0.0).to(dev)  # [b,T]
            adv_tok = token_advantages(adv_all[lo:hi], w_all[lo:hi, :T])  # [b,T]
            loss, stats = policy_loss(logp, logp.detach(), logp_behav, adv_tok, mask,
                                      eps_low=loss_cfg.eps_low, eps_high=loss_cfg.eps_high,
                                      dual_clip=loss_cfg.dual_clip, is_cap=loss_cfg.is_cap)
            share = float(mask.sum()) / total_tokens
            (loss * share).backward()
            loss_total += float(loss.detach()) * share
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * share
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), lc.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.model.eval()
        return {**sums, **credit_stats, "loss": loss_total, "tokens": total_tokens,
                "grad_norm": float(grad_norm), "grad_clipped": float(float(grad_norm) > lc.grad_clip)}  # norm before clipping

    def publish(self) -> None:
        info = publish_snapshot(self.run_dir / "weights", self.state["version"], self.model, self.tok,
                                keep=self.cfg.learner.keep_snapshots)
        canary = canary_logprob(self.model, self.tok)
        self.call_hub(self.hub.publish(info, canary))

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
