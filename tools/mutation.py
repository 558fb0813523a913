"""`make mutation`: generic mutation testing of engine/ with mutmut (not in CI; bounded; figures for reviewers).

Runs in a temp copy of the project (mutmut rewrites sources; the shared working tree is never touched), with
mutmut's fork-server isolation (MLX + threads are not fork-safe from a process that already ran the tests).
Prints the kill rate and the surviving mutants by file; writes reports/mutation.{json,md}.

    python -m tripwire.tools.mutation [--modules engine/admission.py ...] [--tests tests/engine] [--minutes 25] [--jobs 2]

Default modules are the engine's concurrency core that the tiny-model tests exercise quickly; pass
`--modules all` for every engine module (hours on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULES = ("engine/admission.py", "engine/guard.py", "engine/errors.py", "engine/worker.py")
KILLED = ("killed", "timeout")          # a timeout is a detected mutant (the tests did not pass)
STATUS_RE = re.compile(r"^\s*(\S+):\s*(.+?)\s*$")


def _config(modules: list[str], tests: list[str]) -> str:
    q = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return ("\n[tool.mutmut]\n"
            'source_paths = ["tripwire"]\n'
            f"only_mutate = {q(['tripwire/' + m for m in modules])}\n"
            f"pytest_add_cli_args_test_selection = {q(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:tripwire", "-p", "no:cacheprovider", "-q", "-x"]\n'
            'process_isolation = "forkserver"\n'
            'forkserver_warmup = "none"\n')


def _module_of(mutant: str) -> str:
    # engine.admission.xǁAdmissionControllerǁadmit__mutmut_3 -> engine/admission.py
    parts = mutant.split(".")
    idx = next((i for i, p in enumerate(parts) if p.startswith(("x_", "xǁ")) or "__mutmut_" in p), len(parts) - 1)
    return "/".join(parts[:idx]).removeprefix("tripwire/") + ".py"


def run(modules: list[str], tests: list[str], minutes: float, jobs: int, out: Path) -> dict:
    from tripwire.tools.regressions.prove import copy_project

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tripwire-mutation-") as tmp:
        copy = copy_project(ROOT, Path(tmp) / "project")
        # The wheel layout (tripwire/engine/...): mutmut names a mutant after its file path, and the tests import
        # `tripwire.engine.*`; with the checkout layout (engine/ beside tripwire/) the names never match and
        # every mutant looks uncovered.
        for name in ("engine", "invariants", "fuzz", "tools"):
            if (copy / name).is_dir():
                shutil.move(str(copy / name), str(copy / "tripwire" / name))
        with open(copy / "pyproject.toml", "a") as f:
            f.write(_config(modules, tests))
        env = dict(os.environ, PYTHONPATH=str(copy), TRIPWIRE_DEBUG="1")
        env.pop("COVERAGE_PROCESS_START", None)
        print(f"mutmut over {', '.join(modules)} with tests {', '.join(tests)} "
              f"({jobs} children, bounded to {minutes:.0f} min) in {copy}", flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=copy,
                                env=env, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=copy, env=env,
                             capture_output=True, text=True, timeout=300)
        statuses: dict[str, str] = {}
        for line in res.stdout.splitlines():
            m = STATUS_RE.match(line)
            if m and "__mutmut_" in m.group(1):
                statuses[m.group(1)] = m.group(2)
        diffs: dict[str, str] = {}
        survivors = [n for n, s in statuses.items() if s == "survived"]
        for name in survivors[:60]:
            d = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=copy, env=env,
                               capture_output=True, text=True, timeout=60)
            diffs[name] = d.stdout.strip()
    by_file: dict[str, dict] = {}
    for name, st in sorted(statuses.items()):
        f = by_file.setdefault(_module_of(name), {"total": 0, "killed": 0, "survived": [], "no_tests": 0,
                                                   "not_checked": 0, "other": 0})
        f["total"] += 1
        if st in KILLED:
            f["killed"] += 1
        elif st == "survived":
            f["survived"].append(name)
        elif st == "no tests":
            f["no_tests"] += 1
        elif st == "not checked":
            f["not_checked"] += 1
        else:
            f["other"] += 1
    killed = sum(f["killed"] for f in by_file.values())
    survived = sum(len(f["survived"]) for f in by_file.values())
    no_tests = sum(f["no_tests"] for f in by_file.values())
    checked = killed + survived + no_tests + sum(f["other"] for f in by_file.values())
    summary = {"modules": modules, "tests": tests, "mutants": len(statuses), "checked": checked,
               "killed": killed, "survived": survived, "no_tests": no_tests,
               "not_checked": sum(f["not_checked"] for f in by_file.values()),
               "kill_rate_pct": round(100.0 * killed / checked, 1) if checked else None,
               "bounded_out": timed_out, "wall_s": round(time.monotonic() - t0, 1), "by_file": by_file,
               "survivor_diffs": diffs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "mutation.md").write_text(markdown(summary))
    return summary


def markdown(s: dict) -> str:
    lines = ["# Mutation testing (mutmut) over engine/", "",
             f"Modules: {', '.join(s['modules'])}; tests: {', '.join(s['tests'])}.", "",
             f"**Kill rate {s['kill_rate_pct']}%** — {s['killed']} killed of {s['checked']} checked "
             f"({s['survived']} survived, {s['no_tests']} without covering tests, {s['not_checked']} not reached"
             f"{' — run bounded by time' if s['bounded_out'] else ''}); wall {s['wall_s']:.0f}s.", "",
             "| File | Mutants | Killed | Survived | No tests | Not checked |", "|---|---|---|---|---|---|"]
    for f, d in sorted(s["by_file"].items()):
        lines.append(f"| `{f}` | {d['total']} | {d['killed']} | {len(d['survived'])} | {d['no_tests']} | "
                     f"{d['not_checked']} |")
    lines += ["", "## Surviving mutants", ""]
    for f, d in sorted(s["by_file"].items()):
        if not d["survived"]:
            continue
        lines.append(f"### {f} ({len(d['survived'])})")
        for name in d["survived"]:
            diff = s["survivor_diffs"].get(name)
            lines.append(f"- `{name}`")
            if diff:
                body = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
                lines += ["  ```diff", *[f"  {ln}" for ln in body[:8]], "  ```"]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="+", default=list(DEFAULT_MODULES))
    ap.add_argument("--tests", nargs="+", default=["tests/engine"])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default=str(ROOT / "reports"))
    args = ap.parse_args(argv)
    if shutil.which("mutmut") is None and subprocess.run([sys.executable, "-c", "import mutmut"]).returncode != 0:
        print("mutmut is not installed: pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    modules = args.modules
    if modules == ["all"]:
        modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "engine").rglob("*.py"))
    s = run(modules, args.tests, args.minutes, args.jobs, Path(args.out))
    print(f"\nkill rate {s['kill_rate_pct']}%: {s['killed']} killed / {s['checked']} checked, {s['survived']} survived, "
          f"{s['no_tests']} without tests, {s['not_checked']} not reached ({s['wall_s']:.0f}s)")
    for f, d in sorted(s["by_file"].items()):
        print(f"  {f:<28} {d['killed']:>4} killed  {len(d['survived']):>4} survived  of {d['total']}")
    print(f"wrote {Path(args.out) / 'mutation.md'} and mutation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
