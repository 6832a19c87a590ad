"""The `scca` command (DESIGN §8).

  scca bootstrap [--seed S] [--out DIR]          build + warm-start the tiny default model
  scca run CONFIG [--out RUN_DIR] [--set k=v]    every service on this machine
  scca run --resume RUN_DIR                      continue a stopped run from its checkpoint
  scca learner CONFIG --run-dir DIR [--resume]   the learner service alone
  scca actor CONFIG --connect tcp://HOST:PORT    one actor
  scca verifier CONFIG --connect tcp://HOST:PORT one verifier
  scca compare CONFIG --methods grpo,sc_kl --seeds N --out DIR   credit variants side by side
  scca data TASK --n N --split S --out FILE      write procedural prompts as JSONL (math: GSM8K-style)
  scca data math --from gsm8k.jsonl --out FILE   convert your file into the learner's prompt file
  scca make-model --arch qwen2 --out DIR         a small random model folder of a real architecture
  scca eval [CONFIG] [--model RUN_DIR]           held-out accuracy of a model folder (final_model, snapshot)
  scca doctor [CONFIG] [--set k=v] [--out DIR]   preflight: one ok/warn/fail line per check

Exit codes of run and learner: 0 budget spent; 1 failed; 2 bad input (config, data,
folders; named with file and line); 3 stalled (see [monitor]); 130 / 143 stopped by
SIGINT / SIGTERM after a checkpoint (continue with `scca run --resume RUN_DIR`).

What it does not do: no remote launching (start services on other hosts with `scca actor`).
"""

from __future__ import annotations

import os

# Several torch processes share the cores: OpenMP threads must sleep, not spin, while they
# wait (spinning made 2-thread steps 5-8x slower on 2 busy cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Logs are read as plain lines (nohup, Slurm, CI, `scca run`'s report): no progress bars.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from protocol.config import ConfigError, RunConfig, load_config  # noqa: E402
from protocol.dataset import DatasetError  # noqa: E402
from verifiers.tasks.jsonl import JsonlError  # noqa: E402

EXIT_BAD_INPUT = 2

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
    from deploy.launcher import RunStopped, run
    from deploy.preflight import check_inputs, check_reward, check_run_dir

    if args.resume:
        if args.config or args.set or args.out:
            raise ConfigError("--resume continues RUN_DIR with its own config.json: drop CONFIG, --set and --out")
        run_dir = Path(args.resume)
        check_run_dir(run_dir, resume=True)
        cfg = load_config(run_dir / "config.json")
    else:
        cfg = load_config(args.config or DEFAULT_CONFIG, parse_sets(args.set))
        run_dir = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
        check_run_dir(run_dir, resume=False)
    check_reward(cfg)  # a broken plug-in path fails now, in one line, not after a bootstrap
    check_inputs(cfg)  # every data file read now: a bad row is named before any process starts
    ensure_bootstrap(cfg)
    try:
        summary = run(cfg, run_dir, resume=bool(args.resume))
    except RunStopped as exc:
        print(f"scca: {exc}", file=sys.stderr)
        return exc.exit_code
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
    cfg = load_config(args.config, parse_sets(args.set))
    if args.resume and not (Path(args.run_dir) / "checkpoint" / "state.json").is_file():
        raise ConfigError(f"{Path(args.run_dir) / 'checkpoint'}: no checkpoint to resume from (the run stopped "
                          "before its first one): start without --resume")
    from learner.service import main  # torch loads only once the input is known to be good

    summary = main(cfg, Path(args.run_dir), resume=args.resume)
    # Everything is on disk (summary, checkpoint, ledger, metrics): exit now. The interpreter's
    # final garbage collection over torch and transformers takes 10 s on 2 busy cores, and
    # `scca run` stops actors and verifiers only once the learner has exited.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(summary["exit_code"])


def cmd_actor(args) -> int:
    from actors.service import main

    main(load_config(args.config, parse_sets(args.set)), args.connect, args.name, args.metrics_port)
    return 0


def cmd_verifier(args) -> int:
    from verifiers.service import main

    main(load_config(args.config, parse_sets(args.set)), args.connect, args.name, args.metrics_port, args.workers)
    return 0


def cmd_data(args) -> int:
    """Procedural prompts as JSONL: arith / countdown rows in the generic prompt format;
    math: GSM8K-style word problems {"question", "answer": "... #### x"} (the format a
    downloaded GSM8K file has; `[task] name = "math"` reads it through the field mapping)."""
    from protocol.dataset import write_jsonl
    from verifiers.tasks import JSONL, PROCEDURAL, TASKS

    if args.source:  # a user's file (GSM8K, MATH, ...) -> the generic prompt file `scca learner` reads
        if args.task not in JSONL:
            raise ConfigError(f"scca data --from: only the JSONL tasks ({', '.join(JSONL)}) read files")
        rows, report = TASKS[args.task].load(args.source, prompt_field=args.prompt_field,
                                             answer_field=args.answer_field, with_report=True)
        write_jsonl(rows, args.out)
        print(json.dumps(report.summary()))
        print(f"wrote {len(rows)} {args.task} prompts to {args.out}")
        if report.chat_messages:  # the rows keep the user turn only: the system turn goes into the config
            print("its prompts were chat messages: train with [task] prompt_format = \"chat\""
                  + (f" and system_prompt = {json.dumps(report.system_prompt)}" if report.system_prompt else ""))
        return 0
    if args.task == "math":
        from verifiers.tasks import jsonl, wordproblems

        try:
            rows = wordproblems.generate(args.seed, args.n, args.split, max_number=args.max_number,
                                         kinds=tuple(args.kinds.split(",")))
        except ValueError as exc:
            raise ConfigError(f"scca data math: {exc}") from None
        jsonl.write_jsonl(rows, args.out)
        print(f"wrote {len(rows)} GSM8K-style math rows to {args.out}")
        return 0
    if args.task not in PROCEDURAL:
        raise ConfigError(f"scca data {args.task}: no generator; the {args.task!r} task reads your own JSONL "
                          f"([task] train_file); generators: {', '.join(PROCEDURAL + ('math',))}"
                          if args.task in JSONL else f"unknown task {args.task!r}")
    rows = TASKS[args.task].generate(args.seed, args.n, args.split, **task_kwargs(args))
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} {args.task} rows to {args.out}")
    return 0


def cmd_make_model(args) -> int:
    """A small random model folder of a real architecture (learner/local_models.py), optionally
    warm-started on a math JSONL (learner/warm_start.py) in the given prompt format."""
    from learner.local_models import build_model_folder

    out = Path(args.out)
    corpus = None
    rows = []
    if args.warm_start:
        from verifiers.tasks import math as math_task

        rows = [(r["prompt"], r["meta"].get("solution", r["meta"]["answer"])) for r in math_task.load(args.warm_start)]
        corpus = [p + "\n" + s for p, s in rows] + ([args.system_prompt] if args.system_prompt else [])
    raw = out.with_name(out.name + ".random") if rows else out
    try:
        build_model_folder(raw, args.arch, tied=not args.untied, dtype=args.dtype, seed=args.seed, corpus=corpus,
                           hidden_size=args.hidden, layers=args.layers)
    except ValueError as exc:  # unknown arch, a hidden size that is not a multiple of the head size
        raise ConfigError(f"scca make-model: {exc}") from None
    if rows:
        from learner.warm_start import warm_start

        info = warm_start(raw, out, rows, prompt_format=args.prompt_format, system_prompt=args.system_prompt,
                          steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
        shutil.rmtree(raw)
        print(json.dumps(info, indent=2))
    print(f"model folder: {out}")
    return 0


def cmd_eval(args) -> int:
    from deploy.evaluate import run_eval

    cfg = load_config(args.config or DEFAULT_CONFIG, parse_sets(args.set))
    if not args.model and not cfg.model.folder:
        ensure_bootstrap(cfg)
    return run_eval(cfg, args.model, args.samples, args.limit, args.out)


def cmd_doctor(args) -> int:
    from deploy.doctor import doctor

    return doctor(args.config, parse_sets(args.set), Path(args.out) if args.out else None)


SET_HELP = "override one config key, e.g. --set learner.max_steps=50 (value parsed as JSON, else a string); repeatable"


def _add_service_parsers(sub) -> None:
    for name in ("learner", "actor", "verifier"):
        s = sub.add_parser(name, help=f"run one {name} service (to spread a run over hosts)")
        s.add_argument("config", help="the run's TOML config (or the config.json of a run folder)")
        s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
        if name == "learner":
            s.add_argument("--run-dir", required=True,
                           help="folder of the run: prompt files, ledger, snapshots, checkpoint, metrics, logs")
            s.add_argument("--resume", action="store_true",
                           help="continue from RUN_DIR/checkpoint (after Ctrl-C, SIGTERM or a crash)")
        else:
            s.add_argument("--connect", required=True, help="learner address, e.g. tcp://10.0.0.5:5555")
            s.add_argument("--name", default=f"{name}-{int(time.time() * 1000) % 100000}",
                           help="peer name in the learner's logs and ledger (unique per run)")
            s.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0 = a free one)")
        if name == "verifier":
            s.add_argument("--workers", type=int, default=1, help="scorer worker processes")


def _add_tool_parsers(sub) -> None:
    """`scca data`, `scca make-model`, `scca eval`, `scca doctor`."""
    d = sub.add_parser("data", help="write procedural prompts as JSONL, or convert your file")
    d.add_argument("task", help="task (arith, countdown, math, code)")
    d.add_argument("--n", type=int, default=1000, help="rows to write")
    d.add_argument("--from", dest="source", metavar="FILE", help="math/code: convert your JSONL (GSM8K, MATH, "
                   "prompt/answer; field mapping as [task]) into the prompt file `scca learner` reads")
    d.add_argument("--prompt-field", default="", help="with --from: the field holding the prompt")
    d.add_argument("--answer-field", default="", help="with --from: the field holding the answer")
    d.add_argument("--split", default="train", choices=["train", "heldout"], help="which split to draw from")
    d.add_argument("--seed", type=int, default=0, help="seed of the generator")
    d.add_argument("--out", required=True, help="JSONL file to write")
    d.add_argument("--max-number", type=int, default=20, help="math: largest number in a problem")
    d.add_argument("--kinds", default="add,sub,mul,two_step", help="math: problem kinds (add, sub, mul, two_step)")
    d.add_argument("--terms", type=int, help="arith: terms per problem (default 3)")
    d.add_argument("--digits", type=int, help="arith: digits per term (default 2)")
    mm = sub.add_parser("make-model", help="a small random Qwen2/Llama/Gemma/Phi/... folder, built locally")
    mm.add_argument("--arch", default="qwen2", help="qwen2, qwen3, llama, mistral, gemma, gemma2, gemma3, phi, phi3, ...")
    mm.add_argument("--out", required=True, help="model folder to write")
    mm.add_argument("--untied", action="store_true", help="separate output embedding (default: tied, as Qwen2.5-0.5B)")
    mm.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="saved dtype")
    mm.add_argument("--seed", type=int, default=0, help="seed of the weights and the warm start")
    mm.add_argument("--hidden", type=int, default=64, help="hidden size")
    mm.add_argument("--layers", type=int, default=2, help="decoder layers")
    mm.add_argument("--warm-start", metavar="JSONL", help="math JSONL (e.g. from `scca data math`) to train the "
                    "tokenizer on and warm-start the model with")
    mm.add_argument("--steps", type=int, default=200, help="warm-start steps")
    mm.add_argument("--lr", type=float, default=2e-3, help="warm-start AdamW learning rate")
    mm.add_argument("--batch-size", type=int, default=32, help="warm-start examples per step")
    mm.add_argument("--prompt-format", default="chat", choices=["raw", "chat"], help="format of the warm start")
    mm.add_argument("--system-prompt", default="", help="system prompt of the warm start (chat format); give the "
                    "run the same [task] system_prompt: a small model answers only in the format it learned")
    ev = sub.add_parser("eval", help="held-out accuracy of a model folder (a run's final_model, a snapshot)",
                        description="Generate for the run's held-out prompts (its task, data, prompt format and "
                        "[actor] settings) with the Hugging Face engine in this process, score them with the "
                        "task's scorer, and print the accuracy.")
    ev.add_argument("config", nargs="?", help="TOML config of the run (default: deploy/default.toml); a run "
                    "folder's config.json works too")
    ev.add_argument("--model", help="model folder, snapshot, or run folder (its final_model/); default: [model] "
                    "folder, else the bootstrap model")
    ev.add_argument("--samples", type=int, default=1, help="1 = greedy; k = mean reward of k samples at "
                    "[actor] temperature")
    ev.add_argument("--limit", type=int, default=0, help="evaluate the first N held-out prompts (0 = all)")
    ev.add_argument("--out", help="JSON file for the summary and every prompt's rewards and completion")
    ev.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    dr = sub.add_parser("doctor", help="preflight: check config, model, data, sandbox, ports, disk",
                        description="One line per check, each starting with ok, warn or fail; exits 1 if any "
                        "check fails. Without CONFIG it checks deploy/default.toml.")
    dr.add_argument("config", nargs="?", help="TOML config to check (default: deploy/default.toml)")
    dr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    dr.add_argument("--out", help="run folder the run would write (for the disk-space check; default: runs/)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scca", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bootstrap", help="build and warm-start the tiny default model")
    b.add_argument("--seed", type=int, default=0, help="seed of the model and its training data")
    b.add_argument("--task", default="arith", help="procedural task to warm-start on (arith, countdown)")
    b.add_argument("--out", help="default: .cache/scca/bootstrap-s0 (arith), .cache/scca/bootstrap-TASK-sSEED")
    b.add_argument("--terms", type=int, help="arith: terms per problem (default 3)")
    b.add_argument("--digits", type=int, help="arith: digits per term (default 2)")
    b.add_argument("--reference-fraction", type=float, default=0.2,
                   help="share of each SFT batch with the problem's own solution in context (default 0.2)")
    b.add_argument("--reference-target", type=float, default=0.0,
                   help="stop only once greedy accuracy with the solution in context reaches this (default 0: no bar)")
    b.add_argument("--max-steps", type=int, default=2000, help="SFT step limit (default 2000)")
    r = sub.add_parser("run", help="run every service on this machine",
                       description="Start the learner, actors and verifiers of one run on this machine, show "
                       "progress (a live table on a terminal, plain lines otherwise) and stop them all at the end. "
                       "Ctrl-C checkpoints the current step; `scca run --resume RUN_DIR` continues from it.")
    r.add_argument("config", nargs="?", help="TOML config (default: deploy/default.toml)")
    r.add_argument("--out", help="new, empty run folder (default: runs/DATE-TIME); refused if it holds anything")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint, "
                   "with its own config.json")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    _add_service_parsers(sub)
    c = sub.add_parser("compare", help="credit variants x seeds: results.csv, results.md, accuracy.png")
    c.add_argument("config", nargs="?", help="TOML config (default: deploy/default.toml)")
    c.add_argument("--methods", default="grpo,sc_kl,shuffled", help="comma list; grpo = uniform credit")
    c.add_argument("--seeds", type=int, default=3, help="seeds per method")
    c.add_argument("--out", required=True, help="folder of the comparison (one run folder per method and seed)")
    c.add_argument("--target", type=float, help="accuracy for samples_to_target (default: start + 0.10)")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    _add_tool_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"bootstrap": cmd_bootstrap, "run": cmd_run, "learner": cmd_learner, "actor": cmd_actor,
               "verifier": cmd_verifier, "data": cmd_data, "doctor": cmd_doctor, "compare": cmd_compare,
               "make-model": cmd_make_model, "eval": cmd_eval}[args.cmd]
    try:
        return handler(args)
    except (ConfigError, DatasetError, JsonlError) as exc:  # bad input: one line naming the key or file:line
        print(f"scca: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FileNotFoundError as exc:
        print(f"scca: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
