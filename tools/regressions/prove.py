"""Injection proofs: copy the project, put one bug shape back, run the detectors that must catch it.

Every proof runs against its own copy (a temp dir) made from one pristine snapshot of the project taken at
the start of the run, so concurrent edits to the working tree cannot make two proofs see different code.
Subprocesses run with cwd=copy and PYTHONPATH=copy; `engine` resolving to the copy (not to the editable
install) is verified before any detector runs, and again inside pytest by `tools.regressions.pytest_verify`.

Detector processes are children of one pre-warmed fork server (`forkserver`: pytest, MLX and mlx-lm imported
once per run, not once per detector); each behaves as `PYTHONPATH=copy python -m ...` in the copy.
`TRIPWIRE_PROOF_FORKSERVER=0` starts every detector as a fresh interpreter instead (also the fallback when the
server cannot start).

Detector outcomes: fired (caught the shape) | silent (ran, did not fire) | unavailable (the detector does not
exist yet: rule, node id or fuzz target missing) | error (could not run; the message says why).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tripwire.catalogue.base import NotApplicable, Regression

from .forkserver import ForkServer, ForkServerError


ROOT = Path(__file__).resolve().parents[2]
COPY_ITEMS = ("tripwire", "engine", "invariants", "fuzz", "tests", "tools", "pyproject.toml", "setup.py", "setup.cfg",
              "conftest.py")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".fuzz", ".tripwire_cache",
                                ".hypothesis", "reports", ".coverage*", "*.egg-info")
FUZZ_BUDGET = int(os.environ.get("TRIPWIRE_PROOF_FUZZ_BUDGET", "200"))
FUZZ_SEED = 0
STATIC_TIMEOUT_S = 120
FUZZ_TIMEOUT_S = 120
# Plugins a detector test never needs; importing them (schemathesis pulls in hypothesis) costs ~1.7 s of CPU in
# every proof's pytest start-up, more than most detector tests take.
QUIET_PLUGINS = ("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:xdist", "-p", "no:pytest_cov")


@dataclass
class DetectorResult:
    kind: str            # rule | test | fuzz
    name: str
    status: str          # fired | silent | unavailable | error
    seconds: float = 0.0
    detail: str = ""


@dataclass
class ProofResult:
    name: str
    invariants: list[str]
    status: str          # caught | survived | not-applicable | pending | error
    message: str = ""
    seconds: float = 0.0
    detectors: list[DetectorResult] = field(default_factory=list)
    unlisted: list[DetectorResult] = field(default_factory=list)   # fired but not expected (info)
    diff: str = ""
    reused: bool = False  # True: taken from the proof cache (inputs unchanged since it was proved)

    @property
    def fired(self) -> list[DetectorResult]:
        return [d for d in self.detectors if d.status == "fired"]

    def to_dict(self) -> dict:
        return asdict(self)


# -- project snapshot -----------------------------------------------------------------------------------
def copy_project(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for item in COPY_ITEMS:
        s = src / item
        if s.is_dir():
            shutil.copytree(s, dst / item, ignore=IGNORE, dirs_exist_ok=True)
        elif s.is_file():
            shutil.copy2(s, dst / item)
    return dst


def share_checker_cache(snapshot: Path, copy: Path) -> None:
    """Give `copy` the checker's result cache that the baseline runs wrote in `snapshot` (this run, same checker
    code and config): the shape's static run then re-analyzes only the files its codemod changed (entries are
    validated by content hash, the cache file is keyed by the rule sources and config) — ~0.25 s of CPU less
    per static run, the same findings."""
    cache = snapshot / ".tripwire_cache"
    if cache.is_dir():
        shutil.copytree(cache, copy / ".tripwire_cache", dirs_exist_ok=True)


def copy_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TRIPWIRE_PROOF_ROOT"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("COVERAGE_PROCESS_START", None)  # proofs measure detectors, not coverage
    env.setdefault("TRIPWIRE_DEBUG", "1")
    return env


# The fork server's preload costs ~1.5 s of CPU once and saves ~1 s per detector pytest run (less per fuzz run):
# a run with fewer detector processes than this (one shape, `inject prove NAME`) starts fresh ones.
FORKSERVER_MIN_RUNS = 4


def use_forkserver(regs: list[Regression]) -> bool:
    """True when `regs` start enough detector processes to repay the fork server's start-up (and it is not off)."""
    if os.environ.get("TRIPWIRE_PROOF_FORKSERVER", "1") in ("0", "off", "false", "no"):
        return False
    return sum((1 if r.tests else 0) + len(r.fuzz) for r in regs) >= FORKSERVER_MIN_RUNS


def server_env() -> dict[str, str]:
    """The fork server's own environment: the caller's, minus what would import tripwire or start coverage in
    it at interpreter start-up (each child gets its copy's full environment back)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "COVERAGE_PROCESS_START", "TRIPWIRE_MLX_SANITIZER")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float, server: ForkServer | None = None) -> tuple[int, str, str, float]:
    """Run `cmd` in the copy `cwd` with `copy_env(cwd)`: (exit code, stdout, stderr, seconds); -9 on timeout.

    `[sys.executable, "-m", module, ...]` goes through `server` when one is given (a fresh process if it fails)."""
    env = copy_env(cwd)
    if server is not None and cmd[:2] == [sys.executable, "-m"] and len(cmd) > 2 \
            and "TRIPWIRE_MLX_SANITIZER" not in env:
        try:
            return server.run(cmd[2], cmd[3:], cwd, env, timeout)
        except ForkServerError:
            pass
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -9, out, f"timed out after {timeout:.0f}s", time.monotonic() - t0


def _tail(text: str, n: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


_PROBE = r"""
import json, sys
out = {}
from tripwire import engine
out["engine"] = engine.__file__
try:
    from tripwire.invariants.registry import all_rules
    out["rules"] = sorted(r.name for r in all_rules())
except Exception as exc:
    out["rules_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


class Environment:
    """What the pristine snapshot offers: which rules and fuzz targets exist, and that imports resolve to it."""

    def __init__(self, snapshot: Path, server: ForkServer | None = None, *, fuzz: bool = True):
        self.snapshot = snapshot
        self.server = server  # detectors run as its children (None: fresh processes)
        # A fresh interpreter, always: the isolation check must not depend on the fork server.
        rc, out, err, _ = _run([sys.executable, "-c", _PROBE], snapshot, 60)
        if rc != 0:
            raise RuntimeError(f"cannot import the engine from the project copy: {_tail(err)}")
        info = json.loads(out.strip().splitlines()[-1])
        check_isolation(snapshot, info["engine"])
        self.rules: set[str] | None = set(info["rules"]) if "rules" in info else None
        self.rules_error = info.get("rules_error", "")
        self.fuzz_targets: set[str] | None = None
        self.fuzz_error = ""
        if not fuzz:  # no shape of this run lists a fuzz target: `fuzz list` would be a wasted process
            self.fuzz_error = "not listed: no shape of this run has a fuzz detector"
        elif (snapshot / "fuzz" / "__main__.py").exists():
            rc, out, err, _ = _run([sys.executable, "-m", "tripwire.fuzz", "list"], snapshot, 60, server)
            if rc == 0:
                self.fuzz_targets = {m.group(1) for m in re.finditer(r"^\s*([a-z0-9][a-z0-9-]+)\b", out, re.M)}
            else:
                self.fuzz_error = f"`python -m tripwire.fuzz list` exit {rc}: {_tail(err or out)}"
        else:
            self.fuzz_error = "fuzz package has no CLI (fuzz/__main__.py missing)"
        self._baseline: dict[tuple[str, ...], tuple[list[dict] | None, str]] = {}

    def baseline(self, paths: tuple[str, ...]) -> tuple[list[dict] | None, str]:
        if paths not in self._baseline:
            self._baseline[paths] = static_findings(self.snapshot, paths, self.server)[:2]
        return self._baseline[paths]


def check_isolation(copy: Path, engine_file: str) -> None:
    if not Path(engine_file).resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(f"proof isolation broken: `engine` imported from {engine_file}, not from the copy {copy} "
                           "(an editable install shadows PYTHONPATH?)")


# -- detectors ------------------------------------------------------------------------------------------
def static_paths(reg: Regression) -> tuple[str, ...]:
    return tuple(sorted({"engine", *(f for f in reg.files if not f.startswith("engine/"))}))


def static_findings(copy: Path, paths: Iterable[str],
                    server: ForkServer | None = None) -> tuple[list[dict] | None, str, float]:
    """Unsuppressed findings of `python -m tripwire.invariants check PATHS --format json`, run with the copy's config."""
    rc, out, err, secs = _run([sys.executable, "-m", "tripwire.invariants", "check", *paths, "--format", "json"],
                              copy, STATIC_TIMEOUT_S, server)
    if rc not in (0, 1):
        return None, f"checker exit {rc}: {_tail(err or out)}", secs
    try:
        data = json.loads(out)
    except ValueError:
        return None, f"checker printed no JSON: {_tail(out or err)}", secs
    return [f for f in data.get("findings", []) if not f.get("suppressed")], "", secs


def _fingerprint(f: dict) -> str:
    return f.get("fingerprint") or f"{f.get('rule')}:{f.get('path')}:{f.get('message')}"


def run_static(reg: Regression, copy: Path, env: Environment) -> tuple[list[DetectorResult], list[DetectorResult]]:
    if not reg.rules and env.rules is None:
        return [], []
    if env.rules is None:
        return [DetectorResult("rule", r, "unavailable", 0.0, f"checker unavailable: {env.rules_error}")
                for r in reg.rules], []
    paths = static_paths(reg)
    before, berr = env.baseline(paths)
    after, aerr, secs = static_findings(copy, paths, env.server)
    if before is None or after is None:
        msg = berr or aerr
        return [DetectorResult("rule", r, "error", secs, msg) for r in reg.rules], []
    known = {_fingerprint(f) for f in before}
    new: dict[str, list[dict]] = {}
    for f in after:
        if _fingerprint(f) not in known:
            new.setdefault(f["rule"], []).append(f)
    share = secs / max(1, len(reg.rules))

    def where(fs: list[dict]) -> str:
        f = fs[0]
        more = f" (+{len(fs) - 1} more)" if len(fs) > 1 else ""
        return f"{f.get('path')}:{f.get('line')}: {f.get('message', '')}{more}"

    results = []
    for r in reg.rules:
        if r not in env.rules:
            results.append(DetectorResult("rule", r, "unavailable", 0.0, "no such rule in invariants/rules"))
        elif r in new:
            results.append(DetectorResult("rule", r, "fired", share, where(new[r])))
        else:
            results.append(DetectorResult("rule", r, "silent", share, "no new finding"))
    unlisted = [DetectorResult("rule", r, "fired", 0.0, where(fs)) for r, fs in sorted(new.items())
                if r not in reg.rules]
    return results, unlisted


def _node_exists(copy: Path, node: str) -> bool:
    path, _, rest = node.partition("::")
    f = copy / path
    if not f.is_file():
        return False
    func = re.sub(r"\[.*$", "", rest.split("::")[-1])
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(func)}\b", f.read_text(encoding="utf-8"), re.M) is not None


def _junit_key(node: str) -> tuple[str, str]:
    path, _, rest = node.partition("::")
    parts = rest.split("::")
    mod = path[:-3].replace("/", ".") if path.endswith(".py") else path.replace("/", ".")
    return ".".join([mod, *parts[:-1]]), parts[-1]


def junit_cases(junit: Path) -> list[ET.Element]:
    return list(ET.parse(junit).getroot().iter("testcase")) if junit.exists() else []


def cases_for(cases: list[ET.Element], node: str) -> list[ET.Element]:
    """The junit testcases of a node id; a node id without [params] matches all its parametrizations."""
    cls, name = _junit_key(node)
    return [tc for tc in cases if tc.get("classname") == cls
            and (tc.get("name") == name or ("[" not in name and (tc.get("name") or "").startswith(name + "[")))]


def case_outcome(tcs: list[ET.Element]) -> tuple[str, float, str]:
    """(failed|skipped|passed, seconds, first failure line) over one node id's testcases."""
    secs = round(sum(float(tc.get("time") or 0.0) for tc in tcs), 2)
    for tc in tcs:
        bad = tc.find("failure")
        if bad is None:
            bad = tc.find("error")
        if bad is not None:
            msg = (bad.get("message") or "").strip().splitlines()
            return "failed", secs, (msg[0] if msg else "failed")
    if all(tc.find("skipped") is not None for tc in tcs):
        return "skipped", secs, ""
    return "passed", secs, ""


def run_tests(reg: Regression, copy: Path, server: ForkServer | None = None) -> list[DetectorResult]:
    if not reg.tests:
        return []
    present = [t for t in reg.tests if _node_exists(copy, t)]
    results = {t: DetectorResult("test", t, "unavailable", 0.0, "node id not found in the copy")
               for t in reg.tests if t not in present}
    if present:
        junit = copy / ".proof-junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:tripwire", *QUIET_PLUGINS,
               "-p", "tripwire.tools.regressions.pytest_verify", f"--timeout={reg.pytest_timeout}",
               f"--junitxml={junit}", *present]
        rc, out, err, secs = _run(cmd, copy, reg.pytest_timeout * len(present) + 120, server)
        cases = junit_cases(junit)
        for t in present:
            tcs = cases_for(cases, t)
            if not tcs:
                why = (f"pytest did not report it (exit {rc}): {_tail(out + err)}" if junit.exists()
                       else f"pytest exit {rc}: {_tail(err or out)}")
                results[t] = DetectorResult("test", t, "error", 0.0, why)
                continue
            status, secs_t, detail = case_outcome(tcs)
            results[t] = DetectorResult("test", t, "fired" if status == "failed" else "silent", secs_t,
                                        _tail(detail, 300) if status == "failed" else status)
    return [results[t] for t in reg.tests]


def run_fuzz(reg: Regression, copy: Path, env: Environment) -> list[DetectorResult]:
    out_results = []
    for target in reg.fuzz:
        if env.fuzz_targets is None:
            out_results.append(DetectorResult("fuzz", target, "unavailable", 0.0, env.fuzz_error))
            continue
        if target not in env.fuzz_targets:
            out_results.append(DetectorResult("fuzz", target, "unavailable", 0.0,
                                              "no such target in `python -m tripwire.fuzz list`"))
            continue
        # --no-artifacts: the proof needs the verdict only (a traced re-run of a blocking call waits out the
        # watchdog a second time)
        rc, out, err, secs = _run([sys.executable, "-m", "tripwire.fuzz", "run", target, "--budget", str(FUZZ_BUDGET),
                                   "--seed", str(FUZZ_SEED), "--no-artifacts"], copy, FUZZ_TIMEOUT_S, env.server)
        text = (out + "\n" + err).replace("\r", "\n").strip()
        fail = [ln.strip() for ln in text.splitlines() if ln.startswith("FAIL")]
        last = fail[0] if fail else (text.splitlines()[-1] if text else "")
        if rc == 1:
            out_results.append(DetectorResult("fuzz", target, "fired", secs, _tail(last, 300)))
        elif rc == 0:
            out_results.append(DetectorResult("fuzz", target, "silent", secs,
                                              f"no failure in {FUZZ_BUDGET} schedules (seed {FUZZ_SEED})"))
        else:
            out_results.append(DetectorResult("fuzz", target, "error", secs, f"exit {rc}: {_tail(text, 300)}"))
    return out_results


# -- one proof / many proofs ----------------------------------------------------------------------------
def prove_one(reg: Regression, snapshot: Path, env: Environment, workdir: Path) -> ProofResult:
    t0 = time.monotonic()
    res = ProofResult(reg.name, list(reg.invariants), "error")
    pending = reg.pending(snapshot)
    if pending:
        res.status, res.message = "pending", f"target code not landed yet: {', '.join(pending)}"
        return res
    copy = workdir / reg.name
    try:
        copy_project(snapshot, copy)
        share_checker_cache(snapshot, copy)
        try:
            changes = reg.apply(copy)
        except NotApplicable as exc:
            res.status, res.message = "not-applicable", str(exc)
            return res
        res.diff = "".join(ch.diff() for ch in changes)
        static, unlisted = run_static(reg, copy, env)
        res.detectors = [*static, *run_tests(reg, copy, env.server), *run_fuzz(reg, copy, env)]
        res.unlisted = unlisted
        if res.fired:
            res.status = "caught"
            res.message = "caught by " + ", ".join(f"{d.kind} {d.name}" for d in res.fired)
        else:
            res.status = "survived"
            why = sorted({d.status for d in res.detectors}) or ["no detectors listed"]
            res.message = (f"SURVIVED: {reg.name} — no expected detector fired ({', '.join(why)}); "
                           "add or fix a detector, never drop the shape")
    except Exception as exc:  # a proof that cannot run is an error, never a pass
        res.status, res.message = "error", f"{type(exc).__name__}: {exc}"
    finally:
        res.seconds = round(time.monotonic() - t0, 2)
        shutil.rmtree(copy, ignore_errors=True)
    return res


def expected_cost(reg: Regression) -> int:
    """A rough rank of how long a shape's proof takes, to start the long ones first.

    A detector test that catches its shape usually does so by waiting out an asserted bound or its pytest
    timeout (a deadlock, a request that never finishes): tens of seconds each. A fuzz target fails within a few
    schedules (seconds); a rule is one checker run (under a second)."""
    return 10 * len(reg.tests) + 2 * len(reg.fuzz) + (1 if reg.rules else 0)


def parallel_jobs(cpus: int | None = None) -> int:
    """Proofs to run at once when the caller wants the whole catalogue fast: more than the cores, because most of
    a proof's wall time is a detector waiting (see `expected_cost`), not computing."""
    return max(4, 3 * (cpus or os.cpu_count() or 1))


def prove(regs: list[Regression], jobs: int = 2, root: Path = ROOT,
          progress: Callable[[ProofResult, int, int], None] | None = None,
          cache: Any = None) -> list[ProofResult]:
    """Prove every shape in `regs` (up to `jobs` at a time, the costliest first) against one pristine snapshot of
    `root`; results come back in the order of `regs`.

    With a `cache` (a `proof_cache.ProofCache`), a shape whose inputs (see `proof_cache`) hash to a stored
    `caught` verdict is not proved again: its stored result comes back with `reused=True`; every new `caught`
    verdict is stored."""
    from .proof_cache import key as cache_key

    with tempfile.TemporaryDirectory(prefix="tripwire-proof-") as tmp:
        tmpdir = Path(tmp)
        snapshot = copy_project(root, tmpdir / "_pristine")
        results: dict[str, ProofResult] = {}
        keys: dict[str, str] = {}
        todo = []
        done = 0
        for r in regs:
            if cache is not None:
                keys[r.name] = cache_key(r, snapshot, salt=f"fuzz={FUZZ_BUDGET}/{FUZZ_SEED}")
                hit = cache.get(r.name, keys[r.name])
                if hit is not None:
                    res = _from_dict(hit)
                    res.reused = True
                    results[r.name] = res
                    done += 1
                    if progress:
                        progress(res, done, len(regs))
                    continue
            todo.append(r)
        if todo:
            server = None
            if use_forkserver(todo):
                try:
                    server = ForkServer(snapshot, server_env())
                except ForkServerError as exc:  # correct either way, only slower
                    print(f"note: {exc}; detectors run as fresh processes", file=sys.stderr)
            try:
                env = Environment(snapshot, server, fuzz=any(r.fuzz for r in todo))
                # Warm the shared baselines once, before the parallel proofs need them.
                for p in sorted({static_paths(r) for r in todo if r.rules}):
                    env.baseline(p)
                todo.sort(key=expected_cost, reverse=True)  # stable: catalogue order among equals
                with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                    futs = {pool.submit(prove_one, r, snapshot, env, tmpdir): r for r in todo}
                    for fut in as_completed(futs):
                        r = fut.result()
                        results[r.name] = r
                        if cache is not None:
                            cache.put(r.name, keys[r.name], r.to_dict())
                        done += 1
                        if progress:
                            progress(r, done, len(regs))
            finally:
                if server is not None:
                    server.close()
    return [results[r.name] for r in regs]


def _from_dict(d: dict) -> ProofResult:
    fields = {k: v for k, v in d.items() if k in ProofResult.__dataclass_fields__}
    fields["detectors"] = [DetectorResult(**x) for x in d.get("detectors", [])]
    fields["unlisted"] = [DetectorResult(**x) for x in d.get("unlisted", [])]
    return ProofResult(**fields)


def exit_code(results: list[ProofResult]) -> int:
    return 0 if all(r.status in ("caught", "pending") for r in results) else 1
