"""A real Prometheus server scrapes a real short `scca run` (learner, 2 actors, 1 verifier).

The scrape config is deploy/prometheus.yml with each job's discovery replaced by static
targets on 127.0.0.1 (the real metrics ports of the run) and a 1 s interval. The test
asserts through Prometheus' HTTP query API that every process was scraped (`up == 1` for
all 4 targets), that the key series of each process have sane values, and that every
expression of the Grafana dashboard is valid PromQL for this server. Everything it starts
is stopped at the end. Skipped only where the `prometheus` binary is absent (Debian
package `prometheus`)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, metrics_ports, no_processes_with, read_jsonl, scca, sets, stop, wait_for

pytestmark = pytest.mark.integration

STEPS = 8
RUN_TIMEOUT_S = 900  # first step on 2 shared cores, with the start-up evaluation before it
PROMETHEUS = shutil.which("prometheus")
WINDOW = "[30m]"  # *_over_time window: longer than the whole test, so values survive a finished run
JOB_SIZES = {"scca-learner": 1, "scca-actor": 2, "scca-verifier": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_config(ports: dict[str, int]) -> dict:
    """deploy/prometheus.yml, each job's targets replaced by the run's loopback ports."""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    prom["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    for job in prom["scrape_configs"]:
        role = job["job_name"].removeprefix("scca-")
        targets = sorted(f"127.0.0.1:{port}" for name, port in ports.items() if name.split("-")[0] == role)
        assert len(targets) == JOB_SIZES[job["job_name"]], (job["job_name"], ports)
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": targets}]
    assert {j["job_name"] for j in prom["scrape_configs"]} == set(JOB_SIZES)
    return prom


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def values(base: str, expr: str) -> list[float]:
    return sorted(float(r["value"][1]) for r in query(base, expr))


def prometheus_ready(base: str) -> bool:
    try:
        return urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200
    except OSError:
        return False


def test_prometheus_scrapes_every_process_of_a_real_run(bootstrap_dir, tmp_path):
    if PROMETHEUS is None:
        pytest.skip("no `prometheus` binary on PATH (apt-get install prometheus)")
    run_dir = tmp_path / "run"
    overrides = sets(learner={"max_steps": STEPS, "eval_every": 0}, task={"train_size": 2000, "heldout_size": 50},
                     model={"bootstrap_dir": str(bootstrap_dir)})
    run = scca("run", "deploy/default.toml", "--out", str(run_dir), *overrides, log=tmp_path / "launcher.log")
    prom = None
    try:
        wait_for(lambda: (run_dir / "learner.json").exists(), 300, "learner.json", run)
        ports = wait_for(lambda: (lambda p: p if len(p) == 4 else None)(metrics_ports(run_dir)), 120,
                         "metrics ports of learner, 2 actors and the verifier", run)
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(ports)))
        base = f"http://127.0.0.1:{free_port()}"
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address={base.removeprefix('http://')}", "--storage.tsdb.retention.time=1h"],
            stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
        t0 = time.monotonic()
        wait_for(lambda: prometheus_ready(base), 60, "Prometheus ready", prom)
        print(f"prometheus ready in {time.monotonic() - t0:.1f}s")

        # every target of every job scraped and up, while the run is going
        def all_up():
            up = query(base, 'up{job=~"scca-.*"}')
            return len(up) == 4 and all(r["value"][1] == "1" for r in up) and up
        up = wait_for(all_up, 60, "up == 1 for all 4 targets", prom)
        assert sorted(r["metric"]["job"] for r in up) == sorted(j for j, n in JOB_SIZES.items() for _ in range(n))
        assert run.poll() is None, "the run ended before Prometheus scraped it"

        # every dashboard expression is PromQL that this server accepts (run while targets are up)
        dash = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        for expr in exprs:
            query(base, expr.replace("$__rate_interval", "1m"))

        # progress of each process, read through Prometheus
        def trained():
            return values(base, f"max_over_time(scca_learner_step{WINDOW})") >= [1.0] and \
                values(base, f"max_over_time(scca_verifier_samples_scored_total{WINDOW})") > [0.0]
        wait_for(trained, RUN_TIMEOUT_S, "scca_learner_step >= 1 in Prometheus", run, poll=2.0)
        time.sleep(3)  # a few more scrapes of the live processes

        tokens = values(base, f"max_over_time(scca_actor_tokens_generated_total{WINDOW})")
        assert len(tokens) == 2 and min(tokens) > 0, tokens  # both actors generated
        rollouts = values(base, f"max_over_time(scca_actor_rollouts_generated_total{WINDOW})")
        assert len(rollouts) == 2 and min(rollouts) > 0 and all(t >= r for t, r in zip(tokens, rollouts))
        assert values(base, f"max_over_time(scca_actor_learner_alive{WINDOW})") == [1.0, 1.0]
        scored = values(base, f"max_over_time(scca_verifier_samples_scored_total{WINDOW})")
        passed = values(base, f"max_over_time(scca_verifier_samples_passed_total{WINDOW})")
        assert len(scored) == 1 and scored[0] > 0 and 0 <= passed[0] <= scored[0]
        step = values(base, f"max_over_time(scca_learner_step{WINDOW})")
        assert len(step) == 1 and 1 <= step[0] <= STEPS
        assert values(base, f'max_over_time(scca_learner_peers_alive{{role="actor"}}{WINDOW})') == [2.0]
        assert values(base, f'max_over_time(scca_learner_peers_alive{{role="verifier"}}{WINDOW})') == [1.0]
        assert values(base, f"max_over_time(scca_learner_rollouts_received_total{WINDOW})")[0] > 0
        assert values(base, f"max_over_time(scca_learner_digests_mismatched_total{WINDOW})") == [0.0]
        assert values(base, f"max_over_time(scca_learner_weights_publish_seconds{WINDOW})")[0] > 0
        assert values(base, f"max_over_time(scca_learner_ess{WINDOW})")[0] > 0
        acc = values(base, f"max_over_time(scca_learner_heldout_accuracy{WINDOW})")
        assert len(acc) == 1 and 0.0 <= acc[0] <= 1.0
        reward = values(base, f"max_over_time(scca_learner_reward_mean{WINDOW})")
        assert len(reward) == 1 and 0.0 <= reward[0] <= 1.0
        print(f"via Prometheus: step {step[0]:.0f}, actor tokens {tokens}, scored {scored[0]:.0f}, passed {passed[0]:.0f}, "
              f"held-out {acc[0]:.3f}, reward {reward[0]:.3f}")
        # Prometheus saw what the learner wrote itself: no step beyond the ones in metrics.jsonl
        assert step[0] <= max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "step" in r)
    finally:
        if run.poll() is None:
            stop(run, timeout=90)
        if prom is not None and prom.poll() is None:
            stop(prom, timeout=30)
    assert wait_for(lambda: no_processes_with(str(run_dir)), 30, "no process of the run left")
    assert prom.returncode == 0, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert no_processes_with(str(tmp_path / "tsdb"))
