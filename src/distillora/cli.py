"""The command table: each subcommand maps to one plain library function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import UserError
from .rundir import RunDir


def cmd_run(a) -> int:
    from .config import load_config
    from .study import run_study

    overrides = list(a.overrides)
    if a.seeds:
        base = load_config(a.config, overrides).seed
        overrides.append(f"seeds=[{', '.join(str(base + i) for i in range(a.seeds))}]")
    cfg = load_config(a.config, overrides)
    output = a.output or os.path.join("runs", cfg.name)
    run = run_study(cfg, output, force=a.force, quiet=a.quiet)
    print(f"finished: {RunDir(run).report_md}")
    return 0


def cmd_predict(a) -> int:
    from .predict import blank, check_pairs, finished_run, is_pair_task, load_model, max_length, predict

    results = finished_run(a.run)
    texts = [t for t in a.texts]
    pairs = list(a.pairs) if a.pairs else None
    if not texts or any(blank(t) for t in texts + (pairs or [])):
        raise UserError("predict: give at least one non-empty TEXT argument (and non-empty --pair texts)")
    try:
        check_pairs(texts, pairs, is_pair_task(a.run), "TEXT", "--pair")
    except UserError as e:
        raise UserError(f"predict: {e}") from None
    name, backend = load_model(a.run, a.model)
    preds = predict(backend, texts, results["dataset"]["label_names"], max_length(a.run), pairs)
    print(json.dumps({"model": name, "predictions": preds}, indent=2, ensure_ascii=False))
    return 0


def cmd_audit(a) -> int:
    from transformers import AutoTokenizer

    from . import bundles
    from .analysis import run_audit
    from .config import load_config
    from .data import load_splits
    from .fileio import write_json
    from .report import audit_lines

    overrides = list(a.overrides) + ([f"data.source={a.data}"] if a.data else [])
    cfg = load_config(a.config, overrides)
    splits = load_splits(cfg.data, cfg.seed)
    tok = AutoTokenizer.from_pretrained(bundles.resolve(a.tokenizer)) if a.tokenizer else None
    result = run_audit(splits, cfg, tok)  # the same audit every run report carries
    print("\n".join(audit_lines(result, cfg.data.label_names)))
    if a.json:
        write_json(a.json, result)
    return 0


def cmd_export(a) -> int:
    from .export import METHODS, export_run
    from .inference.timing import cpu_name

    unknown = [m for m in a.methods or [] if m not in METHODS]
    if unknown:
        raise UserError(f"export: unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    out = export_run(a.run, a.models or None, tuple(a.methods or METHODS))
    print(f"cpu: {cpu_name()} | threads: {out['threads']}")
    print("model      | copy              | val acc | test acc | 1 sentence p50 | batch 32 ex/s | passed")
    for name, e in out["models"].items():
        if (a.models and name not in a.models) or not e.get("candidates"):
            continue  # entries kept from earlier exports (possibly in an older layout)
        rows = [("fp32", e["fp32_accuracy"]["validation"], e["fp32_accuracy"]["test"], "")]
        for m, c in e["candidates"].items():
            if "error" in c:
                print(f"{name:10s} | {m:17s} | cannot run here: {c['error']}")
            else:
                rows.append((m, c["validation"]["accuracy"], c["test"]["accuracy"], "yes" if c["passed"] else "no"))
        for method, val, test, passed in rows:
            s = e["speed"][method]
            print(f"{name:10s} | {method:17s} | {val:.3f}   | {test:.3f}    | {s['p50_ms_b1']:8.1f} ms    | "
                  f"{s['examples_per_s_b32']:9.0f}     | {passed}")
        print(f"{name:10s} | served: {e['serve']} ({e['reason']})")
    print(f"written: {RunDir(a.run).exports_file} (onnx copies under {RunDir(a.run).exports_dir}/)")
    return 0


def cmd_check(a) -> int:
    from .check import check_run

    checks = check_run(a.run, a.suite, a.data)
    models = list(checks["models"])
    for s in checks["suites"]:
        if s.get("skipped"):
            print(f"suite {s['name']}: skipped ({s['skipped']})")
            continue
        print(f"suite {s['name']} ({s['cases']} cases): pass rate per capability; * below the teacher beyond the 95% CI")
        print(f"{'capability':34s} {'type':8s} {'cases':>5s} " + " ".join(f"{m:>10s}" for m in models))
        for c in s["capabilities"]:
            cells = []
            for m in models:
                e = c["models"][m]
                cells.append(f"{'–' if e.get('pass_rate') is None else format(e['pass_rate'], '.3f')}"
                             f"{'*' if e.get('flagged') else ' '}".rjust(10))
            print(f"{c['name'][:34]:34s} {'/'.join(c['types']):8s} {c['cases']:5d} " + " ".join(cells))
        print(f"{'mean over capabilities':49s}" + " ".join(
            "–".rjust(10) if s["overall"][m]["mean_pass_rate"] is None else f"{s['overall'][m]['mean_pass_rate']:10.3f}"
            for m in models))
    run = RunDir(a.run)
    print(f"written: {run.checks_file}, {run.report_md}, {run.report_html}")
    return 0


def cmd_serve(a) -> int:
    from .serve import create_app, newest_run

    run = a.run or newest_run(a.runs)
    if run is None:
        raise UserError(f"no finished run under {a.runs}/; train one first: "
                        f"distillora run --config configs/quick.yaml (or pass --run DIR)")
    app = create_app(run)
    print(f"serving run {run} at http://{a.host}:{a.port}")
    app.run(host=a.host, port=a.port, threaded=True)
    return 0


def cmd_sweep(a) -> int:
    from .sweep import run_sweep

    rec = run_sweep(a.run, a.depths, a.strategies, a.layers, a.max_minutes, a.quiet, a.timing_rounds)
    if "students" not in rec:  # a non-main process of `accelerate launch`: the main one prints the table
        return 0
    print("student              | strategies         | layers         | params | val acc | test acc [95% CI]    "
          "| fp32 b1 ms | b32 ex/s | Pareto")
    for m in [rec["teacher"]] + rec["students"]:
        t, front = m["test"], "".join(k for k, a in (("L", "latency"), ("P", "params")) if m.get("pareto", {}).get(a))
        print(f"{m['name']:20s} | {','.join(m.get('strategies', ['reference'])):18s} | "
              f"{','.join(map(str, m['teacher_layers'])):14s} | {m['params_total'] / 1e6:5.1f}M | "
              f"{m['validation']['accuracy']:.3f}   | {t['accuracy']:.3f} [{t['ci95']['accuracy'][0]:.3f}, "
              f"{t['ci95']['accuracy'][1]:.3f}] | {m['latency']['fp32_b1_p50_ms']:10.1f} | "
              f"{m['latency']['fp32_b32_examples_per_s']:8.0f} | {front}")
    for m in rec["not_trained"]:
        print(f"{m['name']}: {m['reason']}")
    print(f"smallest student within 1 point of the teacher on validation: {rec['smallest_within_1_point'] or 'none'}")
    print(f"written: {RunDir(a.run).sweep_file}, {RunDir(a.run).report_md} "
          f"({rec['wall_seconds_this_invocation']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distillora", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the whole study into one run directory")
    r.add_argument("--config", help="YAML config (see configs/); defaults apply to what it leaves out")
    r.add_argument("--output", help="run directory (default: runs/<name>)")
    r.add_argument("--force", action="store_true", help="accept a changed config: redo the stages it affects")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--seeds", type=int, metavar="N", help="train every stage with N seeds (seed, seed+1, ...)")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. teacher.train.epochs=2")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("predict", help="print JSON predictions from a finished run")
    q.add_argument("--run", required=True, help="finished run directory")
    q.add_argument("--model", help="model name (default: the best student)")
    q.add_argument("texts", nargs="+", metavar="TEXT")
    q.add_argument("--pair", dest="pairs", action="append", metavar="TEXT_PAIR",
                   help="the second text of a sentence-pair run, once per TEXT, in order")
    q.set_defaults(func=cmd_predict)
    d = sub.add_parser("audit", help="audit a dataset: sizes, balance, duplicates, overlap, lengths, split shift")
    d.add_argument("--data", help="dataset (Hub id or directory); default: the config's data.source")
    d.add_argument("--config", help="YAML config for columns, labels and the validation carve")
    d.add_argument("--tokenizer", default="minilm-l6", help="tokenizer for the length figures ('' to skip)")
    d.add_argument("--json", help="also write the audit as JSON to this file")
    d.add_argument("overrides", nargs="*", metavar="key=value")
    d.set_defaults(func=cmd_audit)
    e = sub.add_parser("export", help="optimised inference copies (torch int8, bf16; onnxruntime fp32, int8), "
                                      "re-measured on validation and test; picks what to serve")
    e.add_argument("--run", required=True, help="finished run directory")
    e.add_argument("--models", nargs="*", help="only these models (default: all)")
    e.add_argument("--methods", nargs="*", help="only these candidate copies (default: all: int8-dynamic, bf16, "
                                                "onnx-fp32, onnx-int8-dynamic, onnx-int8-static)")
    e.set_defaults(func=cmd_export)
    c = sub.add_parser("check", help="behavioural tests (MFT/INV/DIR suites) on every model of a finished run; "
                                     "writes checks.json and the report's section")
    c.add_argument("--run", required=True, help="finished run directory")
    c.add_argument("--suite", action="append", metavar="FILE",
                   help="a suite YAML file or a built-in name (generic, hate_speech); repeat for several "
                        "(default: the run's check.suites)")
    c.add_argument("--data", help="the run's data directory, when its data.source does not resolve from here "
                                  "(suites that sample the validation split need it)")
    c.set_defaults(func=cmd_check)
    w = sub.add_parser("sweep", help="distil students from many layer choices and depths; accuracy against speed")
    w.add_argument("--run", required=True, help="finished run directory: its teacher, tokenisation and recipe are reused")
    w.add_argument("--depths", help="student depths, e.g. 2,3,4,6 (default: those of 2,3,4,6 the teacher allows)")
    w.add_argument("--strategies", help="comma-separated, from odd, even, bottom, top, spread, distilbert (default: all)")
    w.add_argument("--layers", help="extra layer lists, 1-based, e.g. \"1,2,3;4,8,12\"; alone, only these are trained")
    w.add_argument("--max-minutes", type=float, help="start no new student after this many minutes; report what is done")
    w.add_argument("--timing-rounds", type=int, default=5, help="rounds of the alternating timing (20 sentences "
                   "and one batch of 32 per model each; default 5)")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=cmd_sweep)
    s = sub.add_parser("serve", help="serve a finished run in the web app")
    s.add_argument("--run", help="finished run directory (default: the newest under --runs)")
    s.add_argument("--runs", default="runs", help="where to look for the newest run")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "datasets", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"distillora: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("distillora: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


def entry() -> int:
    """The console script and `python -m distillora`: `main` in a process whose allocator asks for
    transparent huge pages and, for every command but the long-lived `serve`, keeps its heap
    (`hugepages`: re-started once with glibc's tunables where they apply)."""
    from .hugepages import restart_with_huge_pages

    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    restart_with_huge_pages(keep_heap=command != "serve")
    return main()
