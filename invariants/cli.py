"""`python -m tripwire.invariants` / `tripwire`: check, rules, explain, report.

Exit status: 0 clean, 1 findings, 2 usage / configuration / internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tripwire", description="Static tripwires for concurrency invariants.")
    p.add_argument("--config", help="config file for every path (default: for each path, the nearest tripwire.toml "
                                    "or pyproject.toml with [tool.tripwire], walking up from it)")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("check", help="check files/directories (default: config `paths`)")
    c.add_argument("paths", nargs="*")
    c.add_argument("--format", choices=["text", "json", "sarif", "markdown"], default="text")
    c.add_argument("--output", "-o", help="write the result to this file instead of stdout")
    c.add_argument("--no-cache", action="store_true", help="neither read nor write .tripwire_cache/")
    c.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: auto)")
    c.add_argument("--select", help="comma-separated rule names/codes to run (overrides config)")
    c.add_argument("--ignore", help="comma-separated rule names/codes to skip (added to config)")
    c.add_argument("--baseline", help="accept findings recorded in this baseline file")
    c.add_argument("--update-baseline", action="store_true", help="write current findings to --baseline, exit 0")
    c.add_argument("--show-suppressed", action="store_true", help="text format: list suppressed findings too")
    c.add_argument("--quiet", "-q", action="store_true", help="no summary line on stderr")
    c.add_argument("--show-config", metavar="PATH", help="print the config that applies to PATH and where it "
                                                          "came from, then exit")

    sub.add_parser("rules", help="list all rules")
    e = sub.add_parser("explain", help="show a rule's rationale, options and examples")
    e.add_argument("rule")

    r = sub.add_parser("report", help="write reports/tripwire.{md,json,sarif}: per-invariant status + evidence")
    r.add_argument("paths", nargs="*")
    r.add_argument("--output-dir", default=None, help="default: <root>/reports")
    r.add_argument("--no-cache", action="store_true")
    r.add_argument("--baseline")
    r.add_argument("--strict", action="store_true", help="exit 1 when an invariant is violated")
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    from .baseline import BaselineError
    from .config import ConfigError

    try:
        if args.cmd == "rules":
            rc = _cmd_rules()
        elif args.cmd == "explain":
            rc = _cmd_explain(args.rule)
        else:
            from .config import load

            if args.cmd == "check" and args.show_config is not None:
                rc = _cmd_show_config(args.config, args.show_config)
            elif args.cmd == "check":
                rc = _cmd_check_paths(args)
            else:
                rc = _cmd_report(args, load(args.config))
        sys.stdout.flush()  # inside the try: a reader that went away fails here, not at interpreter exit
        return rc
    except BrokenPipeError:
        _silence_stdout()
        print("tripwire: error: output closed early (broken pipe); nothing else was affected", file=sys.stderr)
        return 2
    except (ConfigError, BaselineError) as exc:
        print(f"tripwire: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"tripwire: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 2
    except Exception as exc:  # internal error: one line (the traceback with TRIPWIRE_DEBUG=1), exit 2
        if os.environ.get("TRIPWIRE_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"tripwire: internal error: {type(exc).__name__}: {exc} (set TRIPWIRE_DEBUG=1 for the traceback; "
              "please report it)", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _cmd_show_config(config_file, path) -> int:
    from .config import describe, discover_config, load, load_for_path

    if config_file is not None:
        cfg, found = load(config_file), None
    else:
        cfg = load_for_path(path)  # raises FileNotFoundError for a missing path (exit 2)
        found = discover_config(Path(path))
    sys.stdout.write(describe(cfg, found))
    return 0


def _cmd_check_paths(args) -> int:
    """`check`: one run per config (each path gets the config discovered from it, like ruff), unless
    `--config` names one for all or no path is given (then the config found from the working directory)."""
    from .config import ConfigError, load, load_for_path

    if args.config is not None or not args.paths:
        return _cmd_check(args, load(args.config))
    groups: dict[str | None, tuple] = {}
    for p in args.paths:
        cfg = load_for_path(p)
        groups.setdefault(cfg.source, (cfg, []))[1].append(p)
    if len(groups) == 1:
        return _cmd_check(args, next(iter(groups.values()))[0])
    if args.update_baseline:
        raise ConfigError("--update-baseline: the paths fall under different configs "
                          f"({', '.join(str(k or 'defaults') for k in groups)}); pass --config FILE or one "
                          "config's paths at a time")
    return _cmd_check(args, [(cfg, paths) for cfg, paths in groups.values()])


def _cmd_check(args, cfg) -> int:
    """Run and report. `cfg` is one Config (for `args.paths`), or a list of (Config, paths) runs to merge."""
    from .baseline import write_baseline
    from .config import ConfigError
    from .formats import FORMATS, summary_line

    if isinstance(cfg, list):
        from .merge import merge_results

        results = []
        for one, paths in cfg:
            args.paths = paths
            results.append(_run_one(args, one)[0])
        res = merge_results(results, Path.cwd())
        baseline_path = None
    else:
        res, baseline_path = _run_one(args, cfg)
    if args.update_baseline:
        n = write_baseline(baseline_path, res.findings)
        print(f"tripwire: wrote {n} fingerprint(s) to {baseline_path}", file=sys.stderr)
        return 2 if res.internal_errors else 0
    fmt = FORMATS[args.format]
    out = fmt(res, args.show_suppressed) if args.format == "text" else fmt(res)
    if args.output:
        try:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(out, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write --output {args.output!r}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(out)
    if not args.quiet:
        print(summary_line(res), file=sys.stderr)
    return res.exit_code()


def _run_one(args, cfg):
    """Apply the CLI's rule selection and baseline to `cfg`, run it over `args.paths`: (result, baseline path)."""
    from .baseline import load_baseline
    from .checker import run
    from .config import ConfigError, _check_rule_name

    if args.select:
        cfg.select = _split(args.select)
        for n in cfg.select:
            _check_rule_name(n, "--select")
    if args.ignore:
        for n in _split(args.ignore):
            _check_rule_name(n, "--ignore")
        cfg.ignore = cfg.ignore + _split(args.ignore)
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    baseline_path = args.baseline or cfg.baseline
    if baseline_path and not Path(baseline_path).is_absolute() and not args.baseline:
        baseline_path = str(cfg.root / baseline_path)
    if args.update_baseline and not baseline_path:
        raise ConfigError("--update-baseline needs --baseline FILE (or `baseline` in the config)")
    baseline = load_baseline(baseline_path) if baseline_path and not args.update_baseline else None
    res = run(cfg, args.paths or None, use_cache=not args.no_cache, jobs=args.jobs, baseline=baseline)
    return res, baseline_path


def _cmd_rules() -> int:
    from .registry import all_rules

    for r in all_rules():
        kind = "meta" if r.meta else ("default" if r.default_enabled else "configured")
        scope = " (tests)" if r.scope == "tests" else ""
        print(f"{r.code}  {r.name:<34} {r.severity:<8} {kind}{scope}")
    return 0


def _cmd_explain(key: str) -> int:
    from .registry import get_rule

    r = get_rule(key) or get_rule(key.upper())
    if r is None:
        import difflib

        from .registry import all_rules

        close = difflib.get_close_matches(key, [x.name for x in all_rules()], n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(f"tripwire: error: unknown rule {key!r}; {hint}(`tripwire rules` lists them)", file=sys.stderr)
        return 2
    kind = "on by default" if r.default_enabled else "off unless configured under [tool.tripwire.rules." + r.name + "]"
    print(f"{r.code} {r.name} ({r.severity}, {kind}{', test files only' if r.scope == 'tests' else ''})\n")
    print(textwrap.fill(r.rationale, 100) + "\n")
    if r.options:
        print("Options:")
        for k, o in r.options.items():
            print(f"  {k} ({o.type}, default {o.default!r}): {o.help}")
        print()
    for kind in ("INVALID", "VALID"):
        for i, s in enumerate(r.samples(kind), 1):
            print(f"--- {kind}[{i}] ({s.path}) ---")
            print(s.code.rstrip() + "\n")
    return 0


def _cmd_report(args, cfg) -> int:
    from .baseline import load_baseline
    from .report import build_report, write_reports

    baseline = load_baseline(args.baseline) if args.baseline else None
    rep = build_report(args.paths or None, cfg, use_cache=not args.no_cache, baseline=baseline)
    out_dir = Path(args.output_dir) if args.output_dir else cfg.root / "reports"
    written = write_reports(rep, out_dir)
    c = rep["summary"]
    print(f"tripwire report: {c['holds']} hold, {c['violated']} violated, {c['suppressed']} suppressed, "
          f"{c['not-applicable']} not applicable -> {', '.join(str(p) for p in written)}", file=sys.stderr)
    if rep["_result"].internal_errors:
        return 2
    return 1 if (args.strict and c["violated"]) else 0


if __name__ == "__main__":
    sys.exit(main())
