"""Regression injection: `python -m tripwire.tools.inject list | show NAME | prove [NAME ...] [--jobs N] [--json FILE]`.

`prove` copies the project to a temp dir per regression, applies its codemod, runs the detectors expected to
catch it and prints which fired (with timings). Exit 1 if any regression survives, or if a codemod no longer
applies ("regression not applicable: engine changed — update the codemod").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tripwire.progress import Progress
from tripwire.catalogue import catalogue, get
from tripwire.catalogue.base import NotApplicable
from tripwire.tools.regressions.prove import ROOT, ProofResult, exit_code, prove
from tripwire.tools.regressions.proof_cache import default_cache

MARK = {"fired": "✔", "silent": "·", "unavailable": "?", "error": "!"}


def cmd_list(args) -> int:
    regs = catalogue()
    width = max(len(r.name) for r in regs)
    for r in regs:
        pend = r.pending(ROOT)
        flag = f"  [pending: {', '.join(pend)}]" if pend else ""
        dets = ", ".join(f"{k}:{n.split('::')[-1]}" for k, n in r.detectors)
        print(f"{r.name:<{width}}  {'/'.join(r.invariants):<34} {dets}{flag}")
    print(f"\n{len(regs)} regression shapes")
    return 0


def cmd_show(args) -> int:
    try:
        r = get(args.name)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print(f"# {r.name}  ({', '.join(r.invariants)})\n# origin: {r.origin}\n# {r.description}")
    for kind, name in r.detectors:
        print(f"# expects {kind}: {name}")
    pend = r.pending(ROOT)
    if pend:
        print(f"# pending: target code not landed yet: {', '.join(pend)}")
        return 0
    try:
        changes = r.transform(ROOT)
    except NotApplicable as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for ch in changes:
        sys.stdout.write(ch.diff())
    return 0


def print_result(r: ProofResult, i: int | None = None, n: int | None = None) -> None:
    head = f"[{i}/{n}] " if i else ""
    how = "reused, inputs unchanged" if r.reused else f"{r.seconds:.1f}s"
    print(f"{head}{r.status.upper():<14} {r.name} ({how}) {'' if r.status == 'caught' else r.message}")
    for d in r.detectors:
        print(f"      {MARK.get(d.status, '?')} {d.kind:<4} {d.name}  {d.status} {d.seconds:.2f}s  {d.detail}")
    for d in r.unlisted:
        print(f"      i {d.kind:<4} {d.name}  fired (not listed)  {d.detail}")
    sys.stdout.flush()


def cmd_prove(args) -> int:
    try:
        regs = [get(n) for n in args.names] if args.names else catalogue()
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    t0 = time.monotonic()
    print(f"proving {len(regs)} regression(s) with {args.jobs} job(s)…", flush=True)
    root = Path(args.root).resolve()
    cache = None if args.no_cache else default_cache(root)
    with Progress("proofs", len(regs), stream=sys.stdout) as bar:
        def show(r: ProofResult, i: int, n: int) -> None:
            with bar.paused():
                print_result(r, i, n)
            bar.update(i, note=f"last: {r.name} {r.status}")

        results = prove(regs, jobs=args.jobs, root=root, progress=show, cache=cache)
    wall = time.monotonic() - t0
    counts = {s: sum(r.status == s for r in results) for s in ("caught", "survived", "not-applicable", "pending",
                                                                "error")}
    reused = sum(r.reused for r in results)
    if reused:
        print(f"{reused} verdict(s) reused from {cache.directory} (inputs unchanged; --no-cache proves all)")
    print(f"\n{counts['caught']} caught, {counts['survived']} survived, {counts['not-applicable']} not applicable, "
          f"{counts['pending']} pending, {counts['error']} error(s) in {wall:.1f}s")
    for r in results:
        if r.status not in ("caught", "pending"):
            print(f"  {r.status}: {r.message}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"wall_s": round(wall, 2), "results": [r.to_dict() for r in results]},
                                              indent=2) + "\n")
    return exit_code(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.inject", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the catalogue: name, invariants, expected detectors")
    s = sub.add_parser("show", help="print the unified diff a regression applies")
    s.add_argument("name")
    p = sub.add_parser("prove", help="inject each regression into a copy and run its detectors")
    p.add_argument("names", nargs="*")
    p.add_argument("--jobs", "-j", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--root", default=str(ROOT), help="project to copy (default: this checkout)")
    p.add_argument("--no-cache", action="store_true",
                   help="prove every shape cold (default: reuse verdicts whose inputs are unchanged, "
                        "from .tripwire_cache/proofs/)")
    args = ap.parse_args(argv)
    return {"list": cmd_list, "show": cmd_show, "prove": cmd_prove}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
