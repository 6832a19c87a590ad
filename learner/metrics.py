"""Prometheus series of the learner process (DESIGN §9), served on its own `/metrics` port.

What it does: defines the learner's counters and gauges once, and small helpers the hub
and trainer call. What it does not do: no aggregation across processes (Prometheus does
that) and no per-peer label explosion (peers are counted per role).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

P = "scca_learner_"

PEERS = Gauge(P + "peers_alive", "Registered, non-quarantined peers", ["role"])
BAD_MESSAGES = Gauge(P + "bad_messages", "Frames that failed protocol validation (answered with error)")
PEER_ERRORS = Counter(P + "peer_errors_total", "error messages received from peers")
UNWANTED = Counter(P + "unwanted_messages_total", "Valid messages the learner did not want (counted, ignored)", ["reason"])
DUPLICATES = Counter(P + "duplicate_results_total", "Late or duplicate rollouts / verdicts ignored")
REDISPATCHED = Counter(P + "redispatched_total", "Work or verify jobs re-sent after a lease expired or a peer left")
DIGEST_MISMATCH = Counter(P + "digests_mismatched_total", "weights_loaded or rollouts whose digest/canary did not match")
LEDGER = Gauge(P + "ledger_items", "Ledger rows by bucket", ["bucket"])
ROLLOUTS = Counter(P + "rollouts_received_total", "Samples received from actors")
TOKENS = Counter(P + "tokens_received_total", "Completion tokens received from actors")
REWARD = Gauge(P + "reward_mean", "Mean reward of the last verified group")
PASS_RATE = Gauge(P + "pass_rate", "Fraction of samples with reward 1 in the last step")
LOSS = Gauge(P + "loss", "Policy loss of the last step")
STEP = Gauge(P + "step", "Optimiser steps done")
VERSION = Gauge(P + "weights_version", "Current published weights version")
ESS = Gauge(P + "ess", "Effective sample size of the truncated importance weights")
CLIP = Gauge(P + "clip_fraction", "Clipped token fraction", ["side"])
MISMATCH = Gauge(P + "mismatch", "mean |log pi_prox - log mu| (train/inference mismatch)")
HELDOUT = Gauge(P + "heldout_accuracy", "Greedy held-out accuracy of the last evaluation")
DROPPED_STALE = Counter(P + "dropped_stale_total", "Groups dropped for policy lag > max_lag")
LAG = Histogram(P + "policy_lag", "Policy lag of trained groups (versions)", buckets=(0, 1, 2, 3, 4, 8, 16))
STEP_SECONDS = Histogram(P + "step_seconds", "Trainer step phases", ["phase"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
WEIGHT_BYTES_SERVED = Counter(P + "weight_bytes_served_total", "Snapshot bytes sent to actors over the wire")
SCREENED = Counter(P + "screened_total", "Scored groups by SPEED screening outcome (train, drop, continue)", ["outcome"])
PUBLISH_SECONDS = Gauge(P + "weights_publish_seconds", "Seconds to write the last weights snapshot")


def update_ledger(counts: dict) -> None:
    for bucket in ("dispatched", "trained", "dropped", "in_flight"):
        LEDGER.labels(bucket).set(counts[bucket])


def observe_rollout(msg: dict) -> None:
    ROLLOUTS.inc(len(msg["samples"]))
    TOKENS.inc(sum(len(s["token_ids"]) for s in msg["samples"]))


def observe_verdicts(msg: dict) -> None:
    rewards = msg["rewards"]  # a short list of floats: sum/len, not numpy (per message, hot)
    REWARD.set(sum(rewards) / len(rewards))


def observe_step(row: dict) -> None:
    STEP.set(row["step"])
    VERSION.set(row["version"])
    LOSS.set(row["loss"])
    PASS_RATE.set(row["reward_mean"])
    ESS.set(row["ess"])
    MISMATCH.set(row["mismatch"])
    CLIP.labels("low").set(row["clip_frac_low"])
    CLIP.labels("high").set(row["clip_frac_high"])
    for lag in row["lags"]:
        LAG.observe(lag)
    DROPPED_STALE.inc(row["dropped_stale"])
    PUBLISH_SECONDS.set(row["time_publish"])
    for phase in ("collect", "forward_backward", "publish"):
        STEP_SECONDS.labels(phase).observe(row[f"time_{phase}"])
