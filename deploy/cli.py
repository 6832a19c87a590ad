"""The `scca` command (DESIGN §8).

  scca bootstrap [--seed S] [--out DIR]          build + warm-start the tiny default model
  scca run CONFIG [--out RUN_DIR] [--set k=v]    every service on this machine
  scca run --resume RUN_DIR                      continue a stopped run from its checkpoint
  scca learner CONFIG --run-dir DIR [--resume]   the learner service alone
  scca actor CONFIG --connect tcp://HOST:PORT    one actor
  scca verifier CONFIG --connect tcp://HOST:PORT one verifier
  scca compare CONFIG --methods grpo,sc_kl --seeds N --out DIR   credit variants side by side
  scca data TASK --n N --split S --out FILE      write procedural prompts as JSONL
  scca doctor                                    what this machine can run

What it does not do: no remote launching (start services on other hosts with `scca actor`).
"""

from __future__ import annotations

import os

# Several torch processes share the cores: OpenMP threads must sleep, not spin, while they
# wait (spinning made 2-thread steps 5-8x slower on 2 busy cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from protocol.config import ConfigError, RunConfig, load_config  # noqa: E402

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


def parse_sets(items: list[str]) -> dict:
    """`--set learner.max_steps=5` -> {"learner": {"max_steps": 5}} (values parsed as JSON, else str)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[field] = value
    return out


def ensure_bootstrap(cfg: RunConfig) -> Path:
    folder = Path(cfg.model.folder or cfg.model.bootstrap_dir)
    if cfg.model.folder or (folder / "bootstrap.json").exists():
        return folder
    print(f"no bootstrap model at {folder}: building it (a few minutes on 2 cores)", file=sys.stderr)
    cmd_bootstrap(argparse.Namespace(seed=cfg.model.bootstrap_seed, out=str(folder), task=cfg.task.name,
                                     terms=cfg.task.terms if cfg.task.name == "arith" else None,
                                     digits=cfg.task.digits if cfg.task.name == "arith" else None,
                                     reference_fraction=cfg.model.bootstrap_reference_fraction,
                                     reference_target=cfg.model.bootstrap_reference_target, max_steps=2000))
    return folder


def task_kwargs(args) -> dict:
    """`generate` keywords of a procedural task from the command line (arith: terms, digits)."""
    given = {k: getattr(args, k, None) for k in ("terms", "digits")}
    if args.task != "arith":
        if any(v is not None for v in given.values()):
            raise ConfigError(f"--terms and --digits apply to task 'arith' only, not {args.task!r}")
        return {}
    return {"n_terms": given["terms"] or 3, "digits": given["digits"] or 2}


def cmd_bootstrap(args) -> int:
    from learner.bootstrap import bootstrap
    from verifiers.tasks import TASKS, PROCEDURAL

    if args.task not in PROCEDURAL:
        raise ConfigError(f"bootstrap needs a procedural task ({', '.join(PROCEDURAL)}), got {args.task!r}")
    task = TASKS[args.task]
    out = Path(args.out or (".cache/scca/bootstrap-s0" if args.task == "arith" else f".cache/scca/bootstrap-{args.task}-s{args.seed}"))
    if (out / "bootstrap.json").exists():
        print(f"bootstrap model already at {out}: {(out / 'bootstrap.json').read_text()}")
        return 0
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    kw = task_kwargs(args)
    # arith: the 200k rows of the measured bootstrap (window at step 600, deterministic)
    train = task.generate(args.seed, 200_000 if args.task == "arith" else 60_000, "train", **kw)
    heldout = task.generate(args.seed, 500, "heldout", **kw)
    # countdown: stop at the first evaluation in the window (its greedy accuracy swings
    # between evaluations, so waiting for 15% can take thousands of steps).
    prefer_low = 0.15 if args.task == "arith" else 0.10
    info = bootstrap(tmp, train, heldout, task.score, seed=args.seed, prefer_low=prefer_low,
                     reference_fraction=args.reference_fraction, reference_target=args.reference_target,
                     max_steps=args.max_steps)
    info["task"] = {"name": args.task, **kw}  # what the model was warm-started on
    (tmp / "bootstrap.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(info, indent=2))
    return 0


def cmd_run(args) -> int:
    from deploy.launcher import run

    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_config(run_dir / "config.json")
    else:
        cfg = load_config(args.config or DEFAULT_CONFIG, parse_sets(args.set))
        run_dir = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    ensure_bootstrap(cfg)
    summary = run(cfg, run_dir, resume=bool(args.resume))
    print(json.dumps(summary, indent=2))
    print(f"run folder: {run_dir}")
    return 0


def cmd_compare(args) -> int:
    from deploy.compare import check_methods, compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "grpo" not in methods:
        methods.insert(0, "grpo")
    check_methods(methods)  # before a bootstrap that may take minutes
    cfg = load_config(args.config or DEFAULT_CONFIG, parse_sets(args.set))
    ensure_bootstrap(cfg)
    print(compare(cfg, methods, list(range(args.seeds)), Path(args.out), args.target))
    return 0


def cmd_learner(args) -> int:
    from learner.service import main

    main(load_config(args.config, parse_sets(args.set)), Path(args.run_dir), resume=args.resume)
    return 0


def cmd_actor(args) -> int:
    from actors.service import main

    main(load_config(args.config, parse_sets(args.set)), args.connect, args.name, args.metrics_port)
    return 0


def cmd_verifier(args) -> int:
    from verifiers.service import main

    main(load_config(args.config, parse_sets(args.set)), args.connect, args.name, args.metrics_port, args.workers)
    return 0


def cmd_data(args) -> int:
    from protocol.dataset import write_jsonl
    from verifiers.scoring import _task

    rows = _task(args.task).generate(args.seed, args.n, args.split, **task_kwargs(args))
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} {args.task} rows to {args.out}")
    return 0


def cmd_doctor(args) -> int:
    import platform

    import torch

    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
             "cores": os.cpu_count(), "bwrap": shutil.which("bwrap"), "unshare": shutil.which("unshare")}
    try:
        import vllm  # noqa: F401

        facts["vllm"] = vllm.__version__
    except ImportError:
        facts["vllm"] = None
    print(json.dumps(facts, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scca", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bootstrap", help="build and warm-start the tiny default model")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--task", default="arith", help="procedural task to warm-start on (arith, countdown)")
    b.add_argument("--out", help="default: .cache/scca/bootstrap-s0 (arith), .cache/scca/bootstrap-TASK-sSEED")
    b.add_argument("--terms", type=int, help="arith: terms per problem (default 3)")
    b.add_argument("--digits", type=int, help="arith: digits per term (default 2)")
    b.add_argument("--reference-fraction", type=float, default=0.2,
                   help="share of each SFT batch with the problem's own solution in context (default 0.2)")
    b.add_argument("--reference-target", type=float, default=0.0,
                   help="stop only once greedy accuracy with the solution in context reaches this (default 0: no bar)")
    b.add_argument("--max-steps", type=int, default=2000, help="SFT step limit (default 2000)")
    r = sub.add_parser("run", help="run every service on this machine")
    r.add_argument("config", nargs="?")
    r.add_argument("--out")
    r.add_argument("--resume", metavar="RUN_DIR")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    for name in ("learner", "actor", "verifier"):
        s = sub.add_parser(name, help=f"run one {name} service")
        s.add_argument("config")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
        if name == "learner":
            s.add_argument("--run-dir", required=True)
            s.add_argument("--resume", action="store_true")
        else:
            s.add_argument("--connect", required=True, help="learner address, e.g. tcp://10.0.0.5:5555")
            s.add_argument("--name", default=f"{name}-{int(time.time() * 1000) % 100000}")
            s.add_argument("--metrics-port", type=int, default=0)
        if name == "verifier":
            s.add_argument("--workers", type=int, default=1)
    c = sub.add_parser("compare", help="credit variants x seeds: results.csv, results.md, accuracy.png")
    c.add_argument("config", nargs="?")
    c.add_argument("--methods", default="grpo,sc_kl,shuffled", help="comma list; grpo = uniform credit")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--out", required=True)
    c.add_argument("--target", type=float, help="accuracy for samples_to_target (default: start + 0.10)")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    d = sub.add_parser("data", help="write procedural prompts as JSONL")
    d.add_argument("task")
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--split", default="train", choices=["train", "heldout"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True)
    d.add_argument("--terms", type=int, help="arith: terms per problem (default 3)")
    d.add_argument("--digits", type=int, help="arith: digits per term (default 2)")
    sub.add_parser("doctor", help="what this machine can run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"bootstrap": cmd_bootstrap, "run": cmd_run, "learner": cmd_learner, "actor": cmd_actor,
               "verifier": cmd_verifier, "data": cmd_data, "doctor": cmd_doctor, "compare": cmd_compare}[args.cmd]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"scca: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
