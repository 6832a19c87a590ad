"""Static checks of deploy/: Dockerfile, compose.yaml, Kubernetes manifests, prometheus.yml,
and the Grafana dashboard (Docker and a cluster are not available here, so nothing is run).

What is checked: every YAML parses; Kubernetes objects validate against the Kubernetes
JSON schemas in strict mode (kubernetes-validate; `kubectl --dry-run=client` too when a
cluster answers); cross-references a schema cannot see (selectors vs. labels, Service
target ports, volume mounts, claims, scrape annotations vs. ports); every service command
is a real `scca` command line that the real CLI parser and config loader accept; compose
files exist and the ports agree with deploy/prometheus.yml; every dashboard expression
names a metric that the code defines (found by regex in the service sources, so torch is
not imported). What is not checked: that the image builds or that a cluster runs it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.cli import build_parser, parse_sets
from protocol.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"  # schema version the manifests are validated against
METRIC_SOURCES = ("learner/metrics.py", "actors/service.py", "verifiers/service.py")
PORTS = {"learner": 9100, "actor": 9101, "verifier": 9102}  # /metrics ports, one per process type
HUB_PORT = 5555
WORKLOADS = ("Deployment", "StatefulSet")


# ---------------------------------------------------------------- helpers

def defined_metrics() -> dict[str, str]:
    """{series name as exposed: "Counter"|"Gauge"|...} from the prometheus_client calls in METRIC_SOURCES."""
    out = {}
    for rel in METRIC_SOURCES:
        src = (ROOT / rel).read_text()
        prefix = re.search(r'^P\s*=\s*["\'](\w+)["\']', src, re.M)
        pattern = r'\b(Counter|Gauge|Histogram|Summary)\(\s*(P\s*\+\s*)?["\'](\w+)["\']'
        for kind, uses_p, name in re.findall(pattern, src):
            name = (prefix.group(1) if uses_p else "") + name
            base = name.removesuffix("_total") if kind == "Counter" else name
            suffixes = {"Counter": ["_total", "_created"], "Gauge": [""], "Summary": ["", "_sum", "_count", "_created"],
                        "Histogram": ["_bucket", "_sum", "_count", "_created"]}[kind]
            out.update({base + s: kind for s in suffixes})
    return out


def unknown_metrics(expr: str, known: dict[str, str]) -> set[str]:
    return {m for m in re.findall(r"\bscca_\w+", expr) if m not in known}


def k8s_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def check_scca_argv(argv: list[str], env: set[str] = frozenset()) -> tuple:
    """Parse argv (without the `scca` entrypoint) with the real CLI and, for commands with a
    config, load that config with the --set overrides. Returns (args, config or None)."""
    for var in re.findall(r"\$\((\w+)\)", " ".join(argv)):
        assert var in env, f"{argv}: $({var}) is not an env var of the container"
    argv = [re.sub(r"\$\((\w+)\)", r"\1-value", a) for a in argv]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`scca {shlex.join(argv)}` is not a valid scca command line") from exc
    if not getattr(args, "config", None):
        return args, None
    assert (ROOT / args.config).is_file(), f"{args.config} is not in the image (WORKDIR = repository root)"
    try:
        cfg = load_config(ROOT / args.config, parse_sets(args.set))
    except ConfigError as exc:
        raise AssertionError(f"`scca {shlex.join(argv)}`: {exc} (hub.metrics_addr: see the deploy report)") from exc
    return args, cfg


def port_of(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------- YAML and schemas

def test_every_yaml_file_in_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 9, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_k8s_manifests_validate_against_the_kubernetes_schema_strictly():
    kinds = []
    for name, doc in k8s_docs():
        if doc["kind"] == "Kustomization":
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on an unknown or mistyped field
        kinds.append(doc["kind"])
    assert sorted(set(kinds)) == ["Deployment", "PersistentVolumeClaim", "Service", "StatefulSet"]
    bad = next(d for _, d in k8s_docs() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(bad))
    bad["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a typo
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_builds():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH: `kubectl kustomize` not run")
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True).stdout
    built = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d]
    assert sorted(built) == sorted((d["kind"], d["metadata"]["name"]) for _, d in k8s_docs() if d["kind"] != "Kustomization")


def test_k8s_manifests_pass_kubectl_dry_run_or_kubeconform():
    ran = []
    if shutil.which("kubeconform"):
        files = [str(p) for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"]
        subprocess.run(["kubeconform", "-strict", "-summary", "-kubernetes-version", K8S_VERSION + ".0", *files],
                       check=True, timeout=120)
        ran.append("kubeconform")
    if shutil.which("kubectl"):
        try:
            probe = subprocess.run(["kubectl", "version", "--request-timeout=3s", "-o", "json"], capture_output=True,
                                   text=True, timeout=30)
        except subprocess.TimeoutExpired:
            probe = None
        if probe is not None and probe.returncode == 0 and "serverVersion" in probe.stdout:
            subprocess.run(["kubectl", "apply", "--dry-run=client", "-k", str(K8S)], check=True, timeout=120)
            ran.append("kubectl")
    if not ran:
        pytest.skip("neither kubeconform nor a reachable cluster for kubectl: the strict schema test covers the manifests")


# ---------------------------------------------------------------- Kubernetes cross-references

def test_k8s_objects_reference_each_other_consistently():
    docs = [d for _, d in k8s_docs() if d["kind"] != "Kustomization"]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), names
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}
    assert {w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads.values()} == set(PORTS)
    mounts_of = {}
    for name, w in workloads.items():
        spec, labels = w["spec"], w["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector does not match the pod labels"
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        volumes.update({t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])})
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{name}: unknown claim"
        if w["kind"] == "StatefulSet":
            assert spec["serviceName"] in services and services[spec["serviceName"]]["spec"].get("clusterIP") == "None"
        for c in pod.get("initContainers", []) + pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}/{c['name']}: mounts undeclared volume {m['name']}"
                mounts_of.setdefault(m["name"], set()).add(m["mountPath"])
            ports = [p["name"] for p in c.get("ports", [])]
            assert len(ports) == len(set(ports)), f"{name}/{c['name']}: duplicate port names"
    # the shared weights volume sits at one path everywhere (snapshots are named by absolute path)
    assert mounts_of["weights"] == {"/data/run/weights"}
    for sname, svc in services.items():
        sel = svc["spec"]["selector"]
        matched = [w for w in workloads.values() if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service {sname} selects {len(matched)} workloads"
        cport_names = {p["name"] for c in matched[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in cport_names, f"Service {sname}: targetPort {p['targetPort']} not a container port"


def test_k8s_containers_run_valid_scca_commands_on_the_right_ports():
    docs = [d for _, d in k8s_docs() if d["kind"] != "Kustomization"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    seen = set()
    for w in (d for d in docs if d["kind"] in WORKLOADS):
        role = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        notes = w["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == PORTS[role]
        pod = w["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c.get("command") in (None, ["scca"]), f"{c['name']}: overrides the scca entrypoint"
            assert c["image"].split(":")[0] == "scca"
            args, cfg = check_scca_argv(c["args"], {e["name"] for e in c.get("env", [])})
            seen.add(args.cmd)
            cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if args.cmd == "learner":
                assert port_of(cfg.hub.bind) == ("0.0.0.0", HUB_PORT) and cports["hub"] == HUB_PORT
                assert cfg.hub.metrics_port == cports["metrics"] == PORTS["learner"]
            if args.cmd in ("actor", "verifier"):
                assert args.cmd == role and args.metrics_port == cports["metrics"] == PORTS[role]
                host, port = port_of(args.connect)
                hub_ports = {p["port"] for p in services[host]["spec"]["ports"] if p["name"] == "hub"}
                assert hub_ports == {port} == {HUB_PORT}, f"{role} connects to {args.connect}"
            if cfg is not None:
                assert cfg.hub.metrics_addr == "0.0.0.0", f"{c['name']}: /metrics must be reachable from other pods"
    assert seen == {"bootstrap", "data", "learner", "actor", "verifier"}


# ---------------------------------------------------------------- compose

def test_compose_services_files_commands_and_ports():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svcs, volumes = compose["services"], set(compose.get("volumes") or {})
    assert {"learner", "actor", "verifier", "prometheus", "grafana"} <= set(svcs)
    assert svcs["actor"]["deploy"]["replicas"] == 2
    mounts = {}
    for name, s in svcs.items():
        for dep in s.get("depends_on", []):
            assert dep in svcs, f"{name} depends on unknown {dep}"
        for v in s.get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in volumes, f"{name}: undeclared volume {src}"
            mounts.setdefault(name, {})[src] = dst
        if "build" in s:
            assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
        if s.get("image", "").startswith("scca"):
            assert "build" in s and "entrypoint" not in s
            args, cfg = check_scca_argv(s["command"])
            if args.cmd == "learner":
                assert port_of(cfg.hub.bind) == ("0.0.0.0", HUB_PORT) and cfg.hub.metrics_port == PORTS["learner"]
                learner_run_dir = args.run_dir
            if args.cmd in ("actor", "verifier"):
                assert port_of(args.connect) == ("learner", HUB_PORT) and args.metrics_port == PORTS[args.cmd]
            if cfg is not None:
                assert cfg.hub.metrics_addr == "0.0.0.0"
    # actors read snapshots by the learner's absolute path: same volume at the same place
    assert mounts["actor"]["scca-data"] == mounts["learner"]["scca-data"]
    assert learner_run_dir.startswith(mounts["learner"]["scca-data"] + "/")
    assert mounts["prometheus"]["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/scca.yaml").read_text())["providers"][0]
    assert Path(mounts["grafana"]["./grafana/dashboard.json"]).parent == Path(provider["options"]["path"])
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    dash = json.loads((DEPLOY / "grafana/dashboard.json").read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    assert uids == {source["uid"]} and source["url"] == "http://prometheus:9090"


def test_compose_file_passes_docker_compose_config(tmp_path):
    """The compose-spec schema check of `docker compose config` (v2), or of docker-compose
    1.x (Debian package `docker-compose`), which predates the top-level `name` key."""
    v2 = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    if v2:
        cmd = ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"]
    elif shutil.which("docker-compose"):
        data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
        data.pop("name")
        (tmp_path / "compose.yaml").write_text(yaml.safe_dump(data))
        cmd = ["docker-compose", "-f", str(tmp_path / "compose.yaml"), "--project-directory", str(DEPLOY), "config", "-q"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` on PATH")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_torch_bubblewrap_and_every_package():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any("apt-get install" in ln and "bubblewrap" in ln for ln in lines)
    torch_at = next(i for i, ln in enumerate(lines) if "pip install" in ln and "torch==2.13.0" in ln)
    scca_at = next(i for i, ln in enumerate(lines) if re.search(r"pip install \.(\s|$)", ln))
    assert torch_at < scca_at
    assert lines[-2:] == ['ENTRYPOINT ["scca"]', 'CMD ["--help"]']
    copied = set()
    for ln in lines[:scca_at]:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the build context"
                copied.add(src)
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.findall(r'"(\w+)\*"', re.search(r"include = \[(.*?)\]", pyproject).group(1))
    assert set(packages) | {"pyproject.toml", "README.md"} <= copied, copied
    assert (DEPLOY / "default.toml").is_file()


# ---------------------------------------------------------------- Prometheus and Grafana

def test_prometheus_yml_has_one_job_per_process_type_on_the_right_ports():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {f"scca-{r}" for r in PORTS}
    assert jobs["scca-learner"]["static_configs"][0]["targets"] == [f"learner:{PORTS['learner']}"]
    for role in ("actor", "verifier"):
        assert jobs[f"scca-{role}"]["dns_sd_configs"][0] == {"names": [role], "type": "A", "port": PORTS[role], "refresh_interval": "15s"}
    for job in jobs.values():  # a target label `role` would rename scca_learner_peers_alive{role} to exported_role
        for sc in job.get("static_configs", []):
            assert "role" not in sc.get("labels", {})
        assert all(r.get("target_label") != "role" for r in job.get("relabel_configs", []))


def test_prometheus_yml_passes_promtool():
    if shutil.which("promtool") is None:
        pytest.skip("promtool not on PATH (Debian package `prometheus`)")
    out = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_metric_extractor_finds_the_real_series_and_rejects_unknown_ones():
    known = defined_metrics()
    for name in ("scca_learner_step", "scca_learner_policy_lag_bucket", "scca_learner_digests_mismatched_total",
                 "scca_actor_tokens_generated_total", "scca_verifier_samples_scored_total", "scca_verifier_latency_seconds_count"):
        assert name in known, name
    assert unknown_metrics("rate(scca_learner_nope_total[1m]) / scca_learner_step", known) == {"scca_learner_nope_total"}
    assert unknown_metrics("scca_learner_step_bucket", known) == {"scca_learner_step_bucket"}  # a gauge has no buckets


def test_dashboard_panels_query_existing_metrics_and_cover_what_users_watch():
    dash = json.loads((DEPLOY / "grafana/dashboard.json").read_text())
    known = defined_metrics()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exprs = []
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert not unknown_metrics(t["expr"], known), f"panel {p['title']!r}: {unknown_metrics(t['expr'], known)}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            exprs.append(t["expr"])
    # panels may not overlap on the 24-column grid
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"]) for p in dash["panels"]]
    for i, (x, y, w, h) in enumerate(boxes):
        assert x + w <= 24
        for x2, y2, w2, h2 in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, f"overlap at {(x, y)} and {(x2, y2)}"
    used = " ".join(exprs)
    watched = {"throughput": ["scca_actor_tokens_generated_total", "scca_verifier_samples_scored_total"],
               "reward": ["scca_learner_reward_mean"], "held-out accuracy": ["scca_learner_heldout_accuracy"],
               "lag": ["scca_learner_policy_lag_bucket", "scca_learner_dropped_stale_total"], "ESS": ["scca_learner_ess"],
               "credit": ["scca_learner_clip_fraction", "scca_learner_loss"],
               "weight sync": ["scca_learner_weights_publish_seconds", "scca_actor_weights_load_seconds",
                               "scca_learner_digests_mismatched_total"],
               "peers alive": ["scca_learner_peers_alive"]}
    for topic, series in watched.items():
        for s in series:
            assert re.search(rf"\b{s}\b", used), f"no panel shows {topic} ({s})"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("tokens/s", "samples/s", "reward", "held-out", "lag", "ess", "credit", "publish", "digests", "peers"):
        assert word in titles, word
