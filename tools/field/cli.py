"""`python -m tripwire.tools.field fetch | check`: the field corpus's command line.

Exit status: 0 ok (check: every finding judged and every precision target met), 1 failure (check: unjudged
findings or a missed target; fetch: a download failed), 2 usage error, bad manifest / verdict file, or the corpus
is not fetched.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from .corpus import DEFAULT_MANIFEST, DEFAULT_VERDICTS, CorpusError, field_dir, fetch, is_fetched, load_manifest
from .measure import ERROR_RULE_TARGET, OVERALL_TARGET, CheckerError, Outcome, measure, precision
from .verdicts import VerdictError, load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tripwire.tools.field",
        description="Measure tripwire's precision with defaults on real MLX servers (the field corpus).",
        epilog=textwrap.dedent("""\
            `fetch` needs the package registry; `check` works offline once fetched.
            Cache: $TRIPWIRE_FIELD_DIR or ~/.cache/tripwire/field."""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("fetch", "download (pip download --no-deps) and unpack the pinned packages"),
                       ("check", "run the checker with defaults and judge every finding against the verdicts")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="pinned packages (TOML)")
        s.add_argument("--field-dir", type=Path, default=None,
                       help="cache folder (default: $TRIPWIRE_FIELD_DIR or ~/.cache/tripwire/field)")
        if name == "check":
            s.add_argument("--verdicts", type=Path, default=DEFAULT_VERDICTS, help="verdict file (JSON lines)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    base = args.field_dir or field_dir()
    try:
        packages = load_manifest(args.manifest)
    except CorpusError as exc:
        print(f"field: error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "fetch":
        try:
            fetch(packages, base, log=lambda m: print(f"field: {m}", file=sys.stderr))
        except CorpusError as exc:
            print(f"field: error: {exc}", file=sys.stderr)
            return 1
        print(f"field: {len(packages)} package(s) ready in {base / 'src'}", file=sys.stderr)
        return 0
    missing = [p.key for p in packages if not is_fetched(base, p)]
    if missing:
        print(f"field: error: not fetched into {base}: {', '.join(missing)}; "
              f"run `python -m tripwire.tools.field fetch` first", file=sys.stderr)
        return 2
    try:
        from tripwire.invariants.registry import all_rules

        verdicts = load(args.verdicts, {r.name for r in all_rules()})
    except VerdictError as exc:
        print(f"field: error: {exc}", file=sys.stderr)
        return 2
    try:
        outcome = measure(packages, base, verdicts, log=lambda m: print(m, file=sys.stderr))
    except CheckerError as exc:
        print(f"field: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(outcome))
    return 1 if outcome.failures() else 0


def render(o: Outcome) -> str:
    """The human report: counts per package, precision per rule and severity, unjudged, stale, verdict."""
    out = [f"field corpus: {len(o.packages)} package(s), {o.files} file(s), {o.lines} line(s); "
           f"checker wall time {o.wall_s:.2f} s (defaults, empty working directory)", "", "findings per package:"]
    for p in o.packages:
        out.append(f"  {p.name:<22} {p.version:<10} {o.per_package.get(p, 0):>5}")
    out += ["", "per-rule precision (TP/(TP+FP)):",
            f"  {'rule':<32} {'severity':<8} {'findings':>8} {'TP':>4} {'FP':>4} {'unjudged':>8}  precision"]
    for rule, sev, tp, fp, un in o.rows():
        out.append(f"  {rule:<32} {sev:<8} {tp + fp + un:>8} {tp:>4} {fp:>4} {un:>8}  {precision(tp, fp)}")
    tp, fp, un = o.counts()
    out.append(f"overall: {tp}/{tp + fp} true = {precision(tp, fp)} (target >= {OVERALL_TARGET:.0%}); "
               f"{un} unjudged")
    errs = [(r, precision(t, f)) for r, s, t, f, _ in o.rows() if s == "error"]
    out.append("error-severity rules (target >= {:.0%} each): {}".format(
        ERROR_RULE_TARGET, ", ".join(f"{r} {pr}" for r, pr in errs) or "none"))
    if o.unjudged:
        out += ["", f"unjudged findings ({len(o.unjudged)}): judge each (verdict TP or FP, a one-line reason) and "
                    f"add it to the verdict file, keeping it sorted:"]
        out += [j.as_verdict_line() for j in o.unjudged]
    if o.stale:
        out += ["", f"stale verdicts ({len(o.stale)}): no finding matches them any more (remove them):"]
        out += [v.to_json() for v in o.stale]
    fails = o.failures()
    out += ["", "result: " + ("PASS" if not fails else "FAIL: " + "; ".join(fails))]
    return "\n".join(out) + "\n"
