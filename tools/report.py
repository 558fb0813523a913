"""`make report`: the reviewers' invariant report — `reports/index.html` + `reports/invariants.md` (+ JSON, SARIF).

Per invariant (tripwire/catalogue/invariants.py): what it protects and where it comes from; its static status and
the checker's evidence; the regressions that prove its detectors fire (injected into a copy, with timings);
the fuzz targets guarding it (schedules run, failures found on the real engine); the tests pinning it.
Summary on top. Exit 1 if an invariant is violated or a regression survives (or a codemod no longer applies).

    python -m tripwire.tools.report [--jobs N] [--fuzz-budget N] [--fresh-proofs] [--out reports]
                                    [--base REV [--summary]]

Every phase prints done/total and time left at least every 5 s (a bar on a terminal). PR mode (`--base REV`,
`make report BASE=REV`) also builds REV's report with REV's own code in a temporary git worktree and opens the
report with the delta (exit 2 if REV is not a commit). Charts are inline SVG; nothing needs JavaScript.

Content is deterministic across runs on an unchanged tree (timings aside). Detectors that do not exist yet are
reported as "unavailable", never crash the report.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tripwire.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FUZZ_BUDGET = 300
FUZZ_SEED = 0
TEST_TIMEOUT = 60


def log(msg: str) -> None:
    print(msg, flush=True)  # to sys.stdout, which main() points at stderr with --summary


def tree_hash(root: Path = ROOT) -> str:
    """Content hash of everything a proof copies: reused proofs are valid only for the same tree."""
    from tripwire.tools.regressions.prove import COPY_ITEMS

    h = hashlib.sha256()
    for item in COPY_ITEMS:
        p = root / item
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
        for f in files:
            rel = f.relative_to(root).as_posix()
            if "__pycache__" in rel or rel.endswith(".pyc") or "/.fuzz/" in f"/{rel}" or ".egg-info" in rel:
                continue
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


# -- 1. static checker ----------------------------------------------------------------------------------
def run_static(out_dir: Path) -> dict[str, Any]:
    try:
        from tripwire.invariants.report import build_report, public, write_reports
    except Exception as exc:
        return {"available": False, "error": f"static checker unavailable: {type(exc).__name__}: {exc}", "rules": {}}
    t0 = time.monotonic()
    try:
        cwd = os.getcwd()
        os.chdir(ROOT)  # the checker reads [tool.tripwire] from the project's pyproject
        try:
            rep = build_report()
            written = write_reports(rep, out_dir)
        finally:
            os.chdir(cwd)
        pub = public(rep)
    except Exception as exc:
        return {"available": False, "error": f"static checker failed: {type(exc).__name__}: {exc}", "rules": {}}
    rules = {}
    for r in pub.get("rules", []):
        ev = [f"{e.get('path')}:{e.get('line')}: {e.get('message') or e.get('detail') or e.get('what') or ''}".strip()
              for e in r.get("evidence", [])]
        fs = [f"{f.get('path')}:{f.get('line')}: {f.get('message')}" for f in r.get("findings", [])]
        sup = [f"{f.get('path')}:{f.get('line')}: {f.get('justification') or 'baselined'}" for f in r.get("suppressed", [])]
        rules[r["name"]] = {"code": r.get("code"), "status": r.get("status"), "summary": r.get("summary", ""),
                            "evidence": ev, "findings": fs, "suppressed": sup}
    return {"available": True, "error": "", "rules": rules, "summary": pub.get("summary", {}),
            "files_checked": pub.get("files_checked"), "lines_checked": pub.get("lines_checked"),
            "written": sorted(str(Path(p).relative_to(ROOT)) if Path(p).is_relative_to(ROOT) else str(p)
                              for p in written),
            "seconds": round(time.monotonic() - t0, 2)}


# -- 2. injection proofs --------------------------------------------------------------------------------
def load_or_run_proofs(out_dir: Path, jobs: int, fresh: bool,
                       bar: Progress | None = None) -> tuple[list[dict], float, bool]:
    from tripwire.tools.inject import print_result
    from tripwire.catalogue import catalogue
    from tripwire.tools.regressions.prove import prove

    cache = out_dir / "proofs.json"
    current = tree_hash()
    if not fresh and cache.exists():
        try:
            data = json.loads(cache.read_text())
            if data.get("tree_hash") == current and len(data.get("results", [])) == len(catalogue()):
                log(f"      reusing {cache.relative_to(ROOT)} (same tree {current}; --fresh-proofs re-runs them)")
                return data["results"], data.get("wall_s", 0.0), True
        except (ValueError, OSError):
            pass
    regs = catalogue()
    t0 = time.monotonic()

    def show(r, i: int, n: int) -> None:
        if bar is None:
            print_result(r, i, n)
            return
        with bar.paused():
            print_result(r, i, n)
        bar.update(i, note=f"last: {r.name} {r.status}")

    if bar is not None:
        bar.total = len(regs)
    from tripwire.tools.regressions.proof_cache import default_cache

    # Per-shape reuse: a shape whose inputs are unchanged since its last `caught` verdict is not proved again.
    results = prove(regs, jobs=jobs, progress=show, cache=None if fresh else default_cache(ROOT))
    wall = round(time.monotonic() - t0, 2)
    save_proofs(results, wall, cache, current)
    n_reused = sum(r.reused for r in results)
    log(f"      {n_reused}/{len(results)} proof(s) reused from .tripwire_cache/proofs (inputs unchanged)")
    return [r.to_dict() for r in results], wall, n_reused == len(results)


def save_proofs(results: list, wall: float, path: Path, tree: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tree_hash": tree or tree_hash(), "wall_s": wall,
                                "results": [r.to_dict() if hasattr(r, "to_dict") else r for r in results]},
                               indent=2) + "\n")


# -- 3. fuzz targets on the real engine -----------------------------------------------------------------
def _fuzz_targets() -> tuple[set[str] | None, str]:
    if not (ROOT / "fuzz" / "__main__.py").exists():
        return None, "fuzz CLI unavailable (fuzz/__main__.py missing)"
    p = subprocess.run([PY, "-m", "tripwire.fuzz", "list"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return None, f"`python -m tripwire.fuzz list` failed: {(p.stderr or p.stdout).strip()[-300:]}"
    return {m.group(1) for m in re.finditer(r"^\s*([a-z0-9][a-z0-9-]+)\b", p.stdout, re.M)}, ""


def run_fuzz_target(target: str, budget: int) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        p = subprocess.run([PY, "-m", "tripwire.fuzz", "run", target, "--budget", str(budget), "--seed", str(FUZZ_SEED)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"target": target, "status": "error", "schedules": 0, "failures": 0, "detail": "timed out",
                "seconds": round(time.monotonic() - t0, 2)}
    text = (p.stdout + "\n" + p.stderr).replace("\r", "\n")
    # the result line (`OK: N schedules`, `FAIL after N schedule(s)`), else the last progress line (`N/M schedules`)
    sched = [int(x) for x in re.findall(r"^OK: (\d+) schedules", text, re.M)] + \
            [int(x) for x in re.findall(r"after (\d+) schedule", text)] or \
            [int(x) for x in re.findall(r"(\d+)/\d+ schedules", text)][-1:] or \
            [int(x) for x in re.findall(r"schedules (\d+)", text)]
    fails = [int(x) for x in re.findall(r"failures (\d+)", text)]
    fail_line = next((ln.strip() for ln in text.splitlines() if ln.startswith("FAIL")), "")
    ok_line = next((ln.strip() for ln in text.splitlines() if ln.startswith("OK")), "")
    if p.returncode == 0:
        status, detail = "clean", re.sub(r",\s*[\d.]+ schedules/s", "", ok_line)
    elif p.returncode == 1 and fail_line:
        status, detail = "failure", fail_line
    else:
        status, detail = "error", f"exit {p.returncode}: {text.strip()[-300:]}"
    return {"target": target, "status": status, "schedules": max(sched) if sched else 0,
            "failures": max(fails) if fails else (1 if status == "failure" else 0), "detail": detail,
            "seconds": round(time.monotonic() - t0, 2)}


def run_fuzz(targets: list[str], budget: int, bar: Progress | None = None) -> dict[str, dict]:
    available, err = _fuzz_targets()
    out: dict[str, dict] = {}
    todo = []
    for t in targets:
        if available is None:
            out[t] = {"target": t, "status": "unavailable", "schedules": 0, "failures": 0, "detail": err, "seconds": 0}
        elif t not in available:
            out[t] = {"target": t, "status": "unavailable", "schedules": 0, "failures": 0,
                      "detail": "no such target in `python -m tripwire.fuzz list` (not built yet)", "seconds": 0}
        else:
            todo.append(t)
    if bar is not None:
        bar.update(len(out), force=False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for res in pool.map(lambda t: run_fuzz_target(t, budget), todo):
            out[res["target"]] = res
            _echo(bar, f"      {res['target']:<26} {res['status']:<8} {res['schedules']} schedules, "
                       f"{res['failures']} failure(s) ({res['seconds']:.1f}s)")
            if bar is not None:
                bar.update(len(out), note=f"last: {res['target']} {res['status']}")
    return out


def _echo(bar: Progress | None, msg: str) -> None:
    if bar is None:
        log(msg)
    else:
        bar.echo(msg)


# -- 4. tests: pinned node ids, counts, coverage ----------------------------------------------------------
def collect_counts() -> dict[str, Any]:
    p = subprocess.run([PY, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    ids = [ln.strip() for ln in p.stdout.splitlines() if "::" in ln and not ln.startswith(" ")]
    by_suite: dict[str, int] = {}
    for i in ids:
        suite = suite_of(i)
        by_suite[suite] = by_suite.get(suite, 0) + 1
    return {"total": len(ids), "by_suite": dict(sorted(by_suite.items())),
            "error": "" if p.returncode == 0 else f"collection exit {p.returncode}"}


def suite_of(node_id: str) -> str:
    """The suite a test belongs to: the folder under tests/ of its file ("tests" for a file directly in it).
    Only the file part of the node id counts: parameters may contain slashes of their own."""
    parts = node_id.split("::", 1)[0].split("/")
    if parts[0] == "tests":
        return parts[1] if len(parts) > 2 else "tests"
    return parts[0]


_PYTEST_COLLECTED = re.compile(r"\bcollected (\d+) items?")
_PYTEST_RESULT = re.compile(r"\s(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def run_streaming_pytest(cmd: list[str], env: dict, bar: Progress | None, timeout: float) -> int:
    """Run pytest (`-v`) and advance `bar` per finished test (total from "collected N items"); returns the
    exit status. Raises subprocess.TimeoutExpired (after killing it) past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as p:
        done = 0
        assert p.stdout is not None
        for line in p.stdout:
            if time.monotonic() > deadline:
                p.kill()
                raise subprocess.TimeoutExpired(cmd, timeout)
            m = _PYTEST_COLLECTED.search(line)
            if m and bar is not None:
                bar.total = int(m.group(1))
                bar.update(done)
            elif _PYTEST_RESULT.search(line) and "::" in line:
                done += 1
                if bar is not None:
                    bar.update(done)
        return p.wait()


def run_pinned(nodes: list[str], with_coverage: bool,
               bar: Progress | None = None) -> tuple[dict[str, dict], dict[str, Any] | None]:
    """Run the pinned node ids once (junit), optionally under coverage of engine/."""
    from tripwire.catalogue.invariants import node_exists
    from tripwire.tools.regressions.prove import case_outcome, cases_for, junit_cases

    status: dict[str, dict] = {}
    present = [n for n in nodes if node_exists(ROOT, n)]
    for n in nodes:
        if n not in present:
            status[n] = {"status": "missing", "seconds": 0.0, "detail": "node id not found"}
    cov = None
    if not present:
        return status, cov
    with tempfile.TemporaryDirectory(prefix="tripwire-report-") as tmp:
        junit = Path(tmp) / "junit.xml"
        env = dict(os.environ, TRIPWIRE_DEBUG="1")
        env.pop("COVERAGE_PROCESS_START", None)
        base = ["-m", "pytest", "-v", "-p", "no:cacheprovider", f"--timeout={TEST_TIMEOUT}", f"--junitxml={junit}"]
        if with_coverage:
            env["COVERAGE_FILE"] = str(Path(tmp) / ".coverage")
            cmd = [PY, "-m", "coverage", "run", "--rcfile", str(ROOT / "pyproject.toml"), *base, "tests/engine",
                   *[n for n in present if not n.startswith("tests/engine/")]]
        else:
            cmd = [PY, *base, *present]
        returncode = run_streaming_pytest(cmd, env, bar, timeout=900)
        cases = junit_cases(junit)
        for n in present:
            tcs = cases_for(cases, n)
            if not tcs:
                status[n] = {"status": "error", "seconds": 0.0,
                             "detail": f"not reported by pytest (exit {returncode})"}
                continue
            st, secs, detail = case_outcome(tcs)
            status[n] = {"status": st, "seconds": secs, "detail": detail[:300]}
        if with_coverage:
            subprocess.run([PY, "-m", "coverage", "combine", "-q", "--rcfile", str(ROOT / "pyproject.toml")],
                           cwd=ROOT, env=env, capture_output=True, timeout=120)
            cj = Path(tmp) / "coverage.json"
            subprocess.run([PY, "-m", "coverage", "json", "-q", "--rcfile", str(ROOT / "pyproject.toml"),
                            "-o", str(cj)], cwd=ROOT, env=env, capture_output=True, timeout=120)
            if cj.exists():
                cov = coverage_from(json.loads(cj.read_text()), "quick run: tests/engine + pinned test ids")
    return status, cov


def coverage_from(data: dict, source: str) -> dict[str, Any]:
    t = data.get("totals", {})
    stmts, covered = t.get("num_statements", 0), t.get("covered_lines", 0)
    branches, cbranches = t.get("num_branches", 0), t.get("covered_branches", 0)
    files = {}
    for path, f in sorted(data.get("files", {}).items()):
        s = f.get("summary", {})
        files[path] = round(100.0 * s.get("covered_lines", 0) / max(1, s.get("num_statements", 0)))
    return {"source": source,
            # Whole percents: branch coverage of threaded code moves by ~0.1% with timing between runs.
            "line_pct": round(100.0 * covered / stmts) if stmts else None,
            "branch_pct": round(100.0 * cbranches / branches) if branches else None,
            "total_pct": round(t.get("percent_covered", 0.0)),
            "statements": stmts, "branches": branches, "files": files}


# -- assemble -------------------------------------------------------------------------------------------
STATIC_WORST = ("violated", "suppressed", "holds", "not-applicable", "unavailable")


def assemble(static: dict, proofs: list[dict], fuzz: dict[str, dict], tests: dict[str, dict],
             counts: dict, cov: dict | None) -> dict[str, Any]:
    from tripwire.catalogue.invariants import INVARIANTS

    by_name = {p["name"]: p for p in proofs}
    invs = []
    for inv in INVARIANTS:
        rules = []
        for r in inv.rules:
            info = static["rules"].get(r)
            if info is None:
                rules.append({"name": r, "status": "unavailable",
                              "summary": static.get("error") or "rule not implemented yet", "evidence": [],
                              "findings": [], "suppressed": []})
            else:
                rules.append({"name": r, **info})
        regs = [by_name[r.name] for r in inv.regressions() if r.name in by_name]
        fz = [fuzz[t] for t in inv.fuzz if t in fuzz]
        ts = [{"id": t, **tests.get(t, {"status": "not-run", "seconds": 0.0, "detail": ""})} for t in inv.tests]
        problems = []
        problems += [f"static rule {r['name']} violated" for r in rules if r["status"] == "violated"]
        problems += [f"test {t['id']} {t['status']}" for t in ts if t["status"] in ("failed", "error")]
        problems += [f"fuzz {f['target']} found a failure" for f in fz if f["status"] == "failure"]
        problems += [f"regression {p['name']} {p['status']}" for p in regs
                     if p["status"] in ("survived", "not-applicable", "error")]
        violated = any(r["status"] == "violated" for r in rules) or \
            any(t["status"] in ("failed", "error") for t in ts) or any(f["status"] == "failure" for f in fz)
        rule_states = [r["status"] for r in rules]
        static_status = next((s for s in STATIC_WORST if s in rule_states), "no static rule")
        invs.append({
            "id": inv.id, "title": inv.title, "protects": inv.protects, "origin": inv.origin,
            "status": "violated" if violated else "holds", "problems": problems,
            "static_status": static_status, "rules": rules, "regressions": regs, "fuzz": fz, "tests": ts,
        })
    caught = sum(p["status"] == "caught" for p in proofs)
    survived = [p["name"] for p in proofs if p["status"] == "survived"]
    broken = [p["name"] for p in proofs if p["status"] in ("not-applicable", "error")]
    summary = {
        "invariants": len(invs),
        "holding": sum(i["status"] == "holds" for i in invs),
        "violated": [i["id"] for i in invs if i["status"] == "violated"],
        "regressions": len(proofs), "caught": caught, "survived": survived, "not_applicable_or_error": broken,
        "pending": [p["name"] for p in proofs if p["status"] == "pending"],
        "fuzz_schedules": sum(f["schedules"] for f in fuzz.values()),
        "fuzz_failures": sum(f["failures"] for f in fuzz.values() if f["status"] == "failure"),
        "fuzz_targets_run": sum(f["status"] in ("clean", "failure") for f in fuzz.values()),
        "fuzz_targets_unavailable": sorted(t for t, f in fuzz.items() if f["status"] == "unavailable"),
        "static_available": static.get("available", False),
        "static_counts": static.get("summary", {}),
        "coverage": cov,
        "tests_collected": counts.get("total", 0), "tests_by_suite": counts.get("by_suite", {}),
        "pinned_tests": {s: sum(t["status"] == s for t in tests.values())
                         for s in ("passed", "failed", "error", "skipped", "missing")},
    }
    return {"summary": summary, "invariants": invs, "regressions": proofs, "static_error": static.get("error", "")}


PHASES = ("static", "proofs", "fuzz", "tests", "write")


def _bar(n: int, label: str, total: int | None, expected: dict, key: str) -> Progress:
    """A phase's progress on stdout: a line at least every 5 s, a bar on a terminal."""
    return Progress(f"[{n}/{len(PHASES)}] {label}", total, stream=sys.stdout, expected_s=expected.get(key))


def previous_timings(out: Path) -> dict[str, float]:
    """Phase durations of the last report in `out` (time-left estimates before the first item finishes)."""
    try:
        t = json.loads((out / "report.json").read_text()).get("timings", {})
        return {k: float(v) for k, v in t.items() if k in PHASES and isinstance(v, (int, float))}
    except (OSError, ValueError, AttributeError):
        return {}


def phase_static(out: Path, expected: dict) -> dict[str, Any]:
    with _bar(1, "static checker (python -m tripwire.invariants report)", 1, expected, "static") as bar:
        static = run_static(out)
        bar.update(1, note=("ok: " + ", ".join(static.get("written", []))) if static["available"]
                   else static["error"])
    return static


def phase_proofs(out: Path, jobs: int, fresh: bool, expected: dict) -> tuple[list[dict], float, bool]:
    from tripwire.catalogue import catalogue

    with _bar(2, "injection proofs (every catalogued regression, in a copy)", len(catalogue()), expected,
              "proofs") as bar:
        proofs, wall, reused = load_or_run_proofs(out, jobs, fresh, bar=bar)
        bar.update(len(proofs), note="reused from reports/proofs.json" if reused else None)
    return proofs, wall, reused


def phase_fuzz(targets: list[str], budget: int, expected: dict) -> dict[str, dict]:
    with _bar(3, f"fuzz targets on the real engine (budget {budget})", len(targets), expected, "fuzz") as bar:
        fuzz = run_fuzz(targets, budget, bar=bar)
        bar.done = len(fuzz)
    return fuzz


def phase_tests(pinned: list[str], out: Path, expected: dict) -> tuple[dict, dict, dict | None]:
    """(pinned test statuses, test counts, coverage): coverage from `make test` if present, else a quick run."""
    cov_file = out / "coverage.json"
    cov = None
    if cov_file.exists():
        try:
            cov = coverage_from(json.loads(cov_file.read_text()), "make test (reports/coverage.json)")
        except (ValueError, OSError):
            cov = None
    label = f"pinned tests ({len(pinned)} node ids){'' if cov else ' under coverage, + tests/engine'}"
    with _bar(4, label, None, expected, "tests") as bar:
        with ThreadPoolExecutor(max_workers=2) as pool:
            fut_counts = pool.submit(collect_counts)
            tests, quick_cov = run_pinned(pinned, with_coverage=cov is None, bar=bar)
            counts = fut_counts.result()
        bar.total = bar.done = max(bar.done, bar.total or 0) or len(tests)
        bar.note = "pinned: " + ", ".join(f"{n} {s}" for s, n in
                                          ((s, sum(t['status'] == s for t in tests.values()))
                                           for s in ("passed", "failed", "error", "skipped", "missing")) if n)
    return tests, counts, cov or quick_cov


def write_outputs(data: dict[str, Any], out: Path) -> list[Path]:
    from tripwire.tools.report_html import render_html, render_markdown

    paths = [out / "invariants.md", out / "index.html", out / "report.json"]
    paths[0].write_text(render_markdown(data))
    paths[1].write_text(render_html(data))
    paths[2].write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return paths


def build(out: Path, jobs: int, fuzz_budget: int, fresh_proofs: bool) -> dict[str, Any]:
    """Run every phase and return the assembled report data (nothing written but the static reports)."""
    from tripwire.catalogue.invariants import INVARIANTS

    expected = previous_timings(out)
    t_all = time.monotonic()
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    static = phase_static(out, expected)
    timings["static"] = round(time.monotonic() - t0, 2)

    t0 = time.monotonic()
    proofs, proof_wall, reused = phase_proofs(out, jobs, fresh_proofs, expected)
    timings["proofs"] = round(time.monotonic() - t0, 2)

    # Phases that depend on the whole tree are reused while its content hash is unchanged (issue 16).
    from tripwire.tools.report_cache import PhaseCache

    phases = PhaseCache(out / ".reuse", tree_hash(), enabled=not fresh_proofs)
    t0 = time.monotonic()
    targets = sorted({t for inv in INVARIANTS for t in inv.fuzz})
    fuzz = phases.run("fuzz", [targets, fuzz_budget, FUZZ_SEED], lambda: phase_fuzz(targets, fuzz_budget, expected))
    timings["fuzz"] = round(time.monotonic() - t0, 2)

    t0 = time.monotonic()
    pinned = sorted({t for inv in INVARIANTS for t in inv.tests})
    cov_file = out / "coverage.json"
    cov_key = cov_file.stat().st_mtime_ns if cov_file.exists() else None
    tests, counts, cov = phases.run("tests", [pinned, cov_key], lambda: list(phase_tests(pinned, out, expected)))
    timings["tests"] = round(time.monotonic() - t0, 2)
    for phase in phases.reused:
        log(f"      {phase}: reused (same tree {phases.tree}; --fresh runs it again)")

    data = assemble(static, proofs, fuzz, tests, counts, cov)
    timings["total"] = round(time.monotonic() - t_all, 2)
    data["meta"] = {"commit": _git_commit(), "tree_hash": tree_hash(), "fuzz_budget": fuzz_budget,
                    "fuzz_seed": FUZZ_SEED}
    data["timings"] = {**timings, "proof_run_wall_s": proof_wall, "proofs_reused": reused,
                       "phases_reused": phases.reused + (["proofs"] if reused else [])}
    from tripwire.tools.field_report import load_field

    data["field"] = load_field(out)  # reports/field_run.json from `make field-run`, if present
    return data


# -- PR mode: the same report for a base revision ---------------------------------------------------------------
class RevisionError(Exception):
    """The --base revision does not name a commit of this repository."""


def resolve_rev(rev: str, root: Path = ROOT) -> str:
    """The full commit id of `rev`. Raises RevisionError with a message that says what to do."""
    try:
        p = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RevisionError(f"cannot run git: {exc}") from None
    if p.returncode != 0 or not p.stdout.strip():
        raise RevisionError(f"--base {rev!r} is not a commit of this repository (try `git log --oneline`; a "
                            "shallow CI clone needs `git fetch --deepen` first)")
    return p.stdout.strip()


_PHASE_LINE = re.compile(r"^\[(\d+)/(\d+)\] [a-z]")  # "[2/5] injection proofs", not "[14/24] CAUGHT"


def build_base(sha: str, out: Path, jobs: int, fuzz_budget: int, head: dict[str, Any] | None = None,
               root: Path = ROOT) -> tuple[dict[str, Any] | None, str]:
    """(report data of commit `sha`, error text). The base is built by that commit's own `tools.report` in a
    temporary `git worktree` (removed afterwards). Reused: `reports/base/<sha>/report.json` from an earlier PR
    run; HEAD's data when the base's tree hash is HEAD's; HEAD's `proofs.json` (the base's report re-checks
    its tree hash before trusting it)."""
    cached = out / "base" / sha / "report.json"
    if cached.is_file():
        try:
            log(f"[base] reusing {cached} (delete it to rebuild)")
            return json.loads(cached.read_text()), ""
        except (OSError, ValueError):
            pass
    with tempfile.TemporaryDirectory(prefix="tripwire-base-") as tmp:
        wt = Path(tmp) / "tree"
        add = subprocess.run(["git", "worktree", "add", "--detach", str(wt), sha], cwd=root, capture_output=True,
                             text=True, timeout=120)
        if add.returncode != 0:
            return None, f"git worktree add failed: {add.stderr.strip()[-300:]}"
        try:
            if head is not None and head.get("meta", {}).get("tree_hash") == _tree_hash_or_none(wt):
                log(f"[base] {sha[:12]} has HEAD's tree: reusing HEAD's results")
                data = json.loads(json.dumps(head))
                data.pop("delta", None)
                data.pop("base", None)
                data["meta"] = {**data.get("meta", {}), "commit": sha[:12]}
            else:
                data, err = _run_base_report(wt, Path(tmp) / "reports", out, jobs, fuzz_budget, sha)
                if data is None:
                    return None, err
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=root, capture_output=True,
                           timeout=120)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data, ""


def _tree_hash_or_none(root: Path) -> str | None:
    try:
        return tree_hash(root)
    except Exception:  # an older tree may lack files the hash walks: then it is simply not HEAD's tree
        return None


def _run_base_report(wt: Path, base_out: Path, out: Path, jobs: int, fuzz_budget: int,
                     sha: str) -> tuple[dict[str, Any] | None, str]:
    base_out.mkdir(parents=True, exist_ok=True)
    if (out / "proofs.json").is_file():
        (base_out / "proofs.json").write_bytes((out / "proofs.json").read_bytes())
    # the base's own report code: under the tripwire namespace once it has one, the old top-level name before
    module = "tripwire.tools.report" if (wt / "tripwire" / "__init__.py").is_file() else "tools.report"
    cmd = [PY, "-m", module, "--out", str(base_out), "--jobs", str(jobs)]
    if "--fuzz-budget" in (wt / "tools" / "report.py").read_text(errors="replace"):
        cmd += ["--fuzz-budget", str(fuzz_budget)]
    env = dict(os.environ, PYTHONPATH=str(wt) + (os.pathsep + os.environ["PYTHONPATH"]
                                                  if os.environ.get("PYTHONPATH") else ""))
    logfile = out / "base" / sha / "build.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with Progress(f"[base] report of {sha[:12]} (phases)", 5, stream=sys.stdout) as bar, \
            open(logfile, "w", encoding="utf-8") as logf, \
            subprocess.Popen(cmd, cwd=wt, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace") as p:
        assert p.stdout is not None
        for line in p.stdout:
            logf.write(line)
            m = _PHASE_LINE.match(line)
            if m:
                bar.total = int(m.group(2))
                bar.update(int(m.group(1)) - 1, note=line.strip()[:80])
        rc = p.wait()
        bar.update(bar.total or 5)
    rj = base_out / "report.json"
    if not rj.is_file():
        return None, f"the base's `python -m {module}` exited {rc} without a report.json (log: {logfile})"
    return json.loads(rj.read_text()), ""


def summary_markdown(data: dict[str, Any]) -> str:
    """The short Markdown for a PR comment (<= 40 lines): the delta in PR mode, else the headline table."""
    from tripwire.tools.report_delta import delta_markdown
    from tripwire.tools.report_html import render_markdown

    if data.get("delta"):
        return delta_markdown(data["delta"])
    if data.get("base", {}).get("error"):
        return f"tripwire: no delta against {data['base']['rev']}: {data['base']['error']}\n"
    lines = render_markdown(data).splitlines()
    end = next((i for i, ln in enumerate(lines) if ln.startswith("| Invariant |")), min(len(lines), 40))
    return "\n".join(lines[:min(end, 40)]).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--jobs", "-j", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--fuzz-budget", type=int, default=FUZZ_BUDGET)
    ap.add_argument("--fresh-proofs", "--fresh", action="store_true",
                    help="run every phase again: ignore reports/proofs.json from `make test`, the proof cache and "
                         "the cached fuzz/test phases (OUT/.reuse/)")
    ap.add_argument("--base", metavar="REV", help="PR mode: also build the report of REV (in a temporary git "
                    "worktree) and open with what changed (also `make report BASE=REV`)")
    ap.add_argument("--summary", action="store_true", help="print only a <= 40-line Markdown summary on stdout "
                    "(the delta with --base), for a PR comment; progress goes to stderr")
    args = ap.parse_args(argv)
    out = Path(args.out)
    sha = None
    if args.base:
        try:
            sha = resolve_rev(args.base)
        except RevisionError as exc:
            print(f"tools.report: error: {exc}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    real_stdout = sys.stdout
    # progress and log lines go to sys.stdout as looked up at call time: stderr with --summary
    with contextlib.redirect_stdout(sys.stderr if args.summary else sys.stdout):
        data = build(out, args.jobs, args.fuzz_budget, args.fresh_proofs)
        if sha is not None:
            add_delta(data, args.base, sha, out, args.jobs, args.fuzz_budget)
        with _bar(5, "writing reports", 1, {}, "write") as bar:
            write_outputs(data, out)
            (out / "summary.md").write_text(summary_markdown(data))
            bar.update(1)
        if data.get("delta") or data.get("base"):
            log("")
            log(summary_markdown(data).rstrip())  # the delta first, then the totals
        print_totals(data, out)
    if args.summary:
        real_stdout.write(summary_markdown(data))
    return exit_status(data)


def add_delta(data: dict[str, Any], rev: str, sha: str, out: Path, jobs: int, fuzz_budget: int) -> None:
    """Build the base report and put `base` (rev, commit, error) and `delta` into `data`."""
    from tripwire.tools.report_delta import compute_delta

    base, err = build_base(sha, out, jobs, fuzz_budget, head=data)
    data["base"] = {"rev": rev, "commit": sha[:12], "error": err}
    if base is not None:
        data["delta"] = compute_delta(data, base)


def print_totals(data: dict[str, Any], out: Path) -> None:
    s = data["summary"]
    log(f"\ninvariants: {s['holding']}/{s['invariants']} holding, violated: {s['violated'] or 'none'}")
    log(f"regressions: {s['caught']}/{s['regressions']} caught, survived: {s['survived'] or 'none'}"
        + (f", not applicable/error: {s['not_applicable_or_error']}" if s["not_applicable_or_error"] else "")
        + (f", pending: {s['pending']}" if s["pending"] else ""))
    log(f"fuzz: {s['fuzz_schedules']} schedules, {s['fuzz_failures']} failure(s); "
        f"coverage: {_cov_text(s['coverage'])}; tests collected: {s['tests_collected']}")
    log(f"wrote {out / 'index.html'}, {out / 'invariants.md'}, {out / 'report.json'} in "
        f"{data['timings']['total']:.1f}s (reused: {', '.join(data['timings'].get('phases_reused') or []) or 'nothing'})")


def exit_status(data: dict[str, Any]) -> int:
    s = data["summary"]
    return 1 if (s["violated"] or s["survived"] or s["not_applicable_or_error"]) else 0


def _cov_text(cov: dict | None) -> str:
    if not cov:
        return "unavailable"
    return f"line {cov['line_pct']}%, branch {cov['branch_pct']}% ({cov['source']})"


if __name__ == "__main__":
    sys.exit(main())
