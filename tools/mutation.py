"""`make mutation`: generic mutation testing of all of engine/ with mutmut (not in CI; bounded; figures for reviewers).

The engine is split into groups (GROUPS below: modules + the test folders that specify them); each group runs in
its own copy of the project, kept in .tripwire_cache/mutation/GROUP (mutmut rewrites sources there; the working
tree is never touched). The copy persists: mutmut keeps every mutant's result in it and re-tests only what
changed, so a run cut short by its bound or by Ctrl-C (both still report what was checked) continues where it
stopped (`--fresh` starts over); `kill PID` (SIGTERM) stops a background run the same way.
mutmut runs with its fork-server isolation (MLX + threads are not fork-safe from a process that already ran the tests).
Each group's result lands in reports/mutation/<group>.json, stamped with the content hash of its modules and
tests; reports/mutation.{json,md} combine every group's latest result and mark a group whose inputs changed
since it ran as stale.

A complete run of a group replaces its saved result. A run cut short (its --minutes bound, Ctrl-C, SIGTERM) is
laid over it instead (`carry_over`): the mutants it checked get its results, the ones it did not check again keep
their earlier results, carried over (and stale when the group's modules or tests changed since they were
checked): a short rerun after a change never loses hours of results. The combined report gives, per group, how
many results are fresh (checked by its latest run) and how many are carried over (and stale).

    python -m tripwire.tools.mutation                          # every group, in turn
    python -m tripwire.tools.mutation --groups cache server    # some groups
    python -m tripwire.tools.mutation --groups cache --rerun-survivors   # only last run's survivors (after new tests)
    python -m tripwire.tools.mutation --groups server --sample 300     # 300 random unreached mutants: an estimate
    python -m tripwire.tools.mutation --groups server --mutants x_f__mutmut_3 ...   # just these, after new tests
    python -m tripwire.tools.mutation --combine                # only rewrite the combined report
    python -m tripwire.tools.mutation --modules engine/ids.py --tests tests/engine/test_ids.py  # ad hoc

The kill rate counts killed + timeout (+ crashed) of every mutant checked, "no tests" included as not killed;
tools/mutation_equivalents.md explains each survivor that no test can kill (equivalent mutants), and the
combined report gives the rate with and without them.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a timeout or a crash (mutmut says "segfault" for any death by signal, e.g. SIGKILL after the CPU limit) is a
# detected mutant: the tests did not pass
KILLED = ("killed", "timeout", "segfault")

# group -> (modules (globs under the repo root), tests that specify them). Every engine module belongs to one group
# (tests/tools/test_tools_mutation.py checks it).
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "core": (("engine/__init__.py", "engine/admission.py", "engine/channel.py", "engine/errors.py",
              "engine/guard.py", "engine/ids.py", "engine/protocol.py", "engine/seams.py", "engine/tokenizing.py",
              "engine/types.py", "engine/worker.py"),
             ("tests/engine",)),
    "simple": (("engine/simple.py", "engine/backend.py"), ("tests/engine", "tests/cache/test_cache_engine.py")),
    "cache": (("engine/cache/*.py",), ("tests/cache",)),
    "server": (("engine/server/*.py",), ("tests/server",)),
    "cli": (("engine/__main__.py", "engine/tiny_model.py"),
            ("tests/engine/test_tiny_model.py", "tests/server/test_server_cli.py")),
}
STATUS_RE = re.compile(r"^\s*(\S+):\s*(.+?)\s*$")


def _config(modules: list[str], tests: list[str]) -> str:
    q = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return ("\n[tool.mutmut]\n"
            'source_paths = ["tripwire"]\n'
            f"only_mutate = {q(['tripwire/' + m for m in modules])}\n"
            f"pytest_add_cli_args_test_selection = {q(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:tripwire", "-p", "no:cacheprovider", "-p", '
            '"tripwire.tools.mutation_order", "-p", "tripwire.tools.mutation_fixture_stats", "-q", "-x"]\n'
            'process_isolation = "forkserver"\n'
            'forkserver_warmup = "collect"\n')


def _module_of(mutant: str) -> str:
    # engine.admission.xǁAdmissionControllerǁadmit__mutmut_3 -> engine/admission.py
    parts = mutant.split(".")
    idx = next((i for i, p in enumerate(parts) if p.startswith(("x_", "xǁ")) or "__mutmut_" in p), len(parts) - 1)
    return "/".join(parts[:idx]).removeprefix("tripwire/") + ".py"


def expand(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Module globs (repo-relative) -> sorted file list; a pattern matching nothing is kept (mutmut will say so)."""
    out: list[str] = []
    for pat in patterns:
        hits = sorted(Path(h).relative_to(ROOT).as_posix() for h in glob.glob(str(ROOT / pat)))
        out += hits or [pat]
    return sorted(dict.fromkeys(out))


def inputs_hash(modules: list[str], tests: list[str]) -> str:
    """Content hash of a group's inputs (its modules and every file under its tests): a result is stale when it changes."""
    h = hashlib.sha256()
    files: list[Path] = [ROOT / m for m in modules]
    for t in tests:
        p = ROOT / t
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    return h.hexdigest()[:16]


class MutmutFailed(RuntimeError):
    """mutmut stopped with an error before its bound (e.g. a test fails in its clean or stats run)."""


def _mutmut(copy: Path, env: dict, args: list[str], minutes: float) -> bool:
    """Run `mutmut ARGS` in COPY, bounded; True when the bound, Ctrl-C or SIGTERM cut it short: what mutmut saved
    so far still makes the report.

    Raises:
        MutmutFailed: mutmut exited non-zero on its own (its output, above, says why).
    """
    def stop_on_sigterm(signum, frame):
        raise KeyboardInterrupt  # `kill PID` of a background run (whose shell ignores SIGINT) stops it like Ctrl-C

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm) if in_main else None
    proc = None
    try:  # from before the start: a signal right after Popen returns still stops mutmut (its own session ignores
        # the terminal's Ctrl-C, so nothing else would)
        proc = subprocess.Popen([sys.executable, "-m", "mutmut", *args], cwd=copy, env=env, start_new_session=True)
        rc = proc.wait(timeout=minutes * 60)
        if rc != 0:
            raise MutmutFailed(f"mutmut exited with {rc} before testing every mutant")
        return False
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        if proc is None:  # interrupted before mutmut started: nothing ran, nothing to report
            raise
        if isinstance(stop, KeyboardInterrupt):
            print("\ninterrupted: stopping mutmut, then reporting what it checked so far", flush=True)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return True
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


WORK = ROOT / ".tripwire_cache" / "mutation"


def stage(dst: Path, modules: list[str], tests: list[str]) -> Path:
    """Lay the project out in DST for mutmut (wheel layout + the group's config), touching only what changed.

    DST persists between runs (WORK/GROUP): mutmut keeps each mutant's result in DST/mutants and re-tests only
    what changed, so a bounded run continues where the last one stopped. An unchanged file keeps its mtime
    (mutmut then keeps its mutants' results); a changed one gets a fresh mtime (mutmut regenerates its mutants
    and re-tests the functions whose code changed). Files mutmut only copies once (tests, config) are refreshed
    in DST/mutants too. Returns DST.
    """
    from tripwire.tools.regressions.prove import copy_project

    with tempfile.TemporaryDirectory(prefix="tripwire-mutation-") as tmp:
        fresh = copy_project(ROOT, Path(tmp) / "project")
        # The wheel layout (tripwire/engine/...): mutmut names a mutant after its file path, and the tests import
        # `tripwire.engine.*`; with the checkout layout (engine/ beside tripwire/) the names never match and
        # every mutant looks uncovered.
        for name in ("engine", "invariants", "fuzz", "tools", "sanitizer"):
            if (fresh / name).is_dir():
                shutil.move(str(fresh / name), str(fresh / "tripwire" / name))
        with open(fresh / "pyproject.toml", "a") as f:
            f.write(_config(modules, tests))
        sync(fresh, dst, mutated={f"tripwire/{m}" for m in modules})
    return dst


def sync(src: Path, dst: Path, mutated: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Make DST's files (outside DST/mutants) equal SRC's; returns the relative paths written or removed.

    A changed pyproject.toml (the group's mutmut and pytest configuration: plugins, test selection) or a changed
    module of MUTATED (relative paths: new or rewritten functions) also drops mutmut's stats (which tests reach
    which function), so its next run collects them again; mutmut itself re-collects only for tests it has not
    seen, and a function it has no stats for gets "no tests".
    """
    dst.mkdir(parents=True, exist_ok=True)
    mirror = dst / "mutants"
    seen: set[Path] = set()
    changed: list[str] = []
    for f in sorted(src.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(src)
        seen.add(rel)
        t = dst / rel
        if t.is_file() and t.read_bytes() == f.read_bytes():
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, t)           # a fresh mtime: newer than mutmut's copy, so mutmut redoes this file
        changed.append(rel.as_posix())
        if rel.parts[0] != "tripwire" and (mirror / rel).parent.is_dir():
            shutil.copyfile(f, mirror / rel)   # mutmut copies files outside its source path only once
    for t in sorted(dst.rglob("*")):
        rel = t.relative_to(dst)
        if t.is_file() and rel.parts[0] != "mutants" and rel not in seen:
            t.unlink()
            (mirror / rel).unlink(missing_ok=True)
            changed.append(rel.as_posix())
    if "pyproject.toml" in changed or mutated.intersection(changed):
        (mirror / "mutmut-stats.json").unlink(missing_ok=True)
    return changed


def run(modules: list[str], tests: list[str], minutes: float, jobs: int, only: list[str] | None = None,
        workdir: Path | None = None) -> dict:
    """Mutate MODULES, test with TESTS (mutmut picks, per mutant, the tests that reach its function).

    ONLY: mutant names to (re)run; the result then holds only them. WORKDIR: the persistent staging directory
    (see `stage`); None stages into a temp directory that is removed afterwards. Returns the group result (see
    `summarize`).
    """
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tripwire-mutation-") as tmp:
        copy = stage(workdir or Path(tmp) / "project", modules, tests)
        env = dict(os.environ, PYTHONPATH=str(copy), TRIPWIRE_DEBUG="1")
        env.pop("COVERAGE_PROCESS_START", None)
        what = f"{len(only)} named mutants of " if only else ""
        print(f"mutmut over {what}{', '.join(modules)} with tests {', '.join(tests)} "
              f"({jobs} children, bounded to {minutes:.0f} min)", flush=True)
        timed_out = _mutmut(copy, env, ["run", "--max-children", str(jobs), *(only or [])], minutes)
        res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=copy, env=env,
                             capture_output=True, text=True, timeout=300)
        statuses: dict[str, str] = {}
        for line in res.stdout.splitlines():
            m = STATUS_RE.match(line)
            if m and "__mutmut_" in m.group(1):
                statuses[m.group(1)] = m.group(2)
        if only:   # a rerun reports only the mutants it was asked about
            statuses = {n: st for n, st in statuses.items() if n in set(only)}
        elif workdir is not None:   # results kept from earlier runs of functions that no longer exist
            statuses = {n: st for n, st in statuses.items() if _module_of(n) in set(modules)}
        alive = [n for n, st in statuses.items() if st not in KILLED and st != "not checked"]
        diffs = survivor_diffs(copy, env, alive)
    return summarize(modules, tests, statuses, diffs, timed_out, time.monotonic() - t0)


# One process for every diff (`mutmut show NAME` is a process per mutant: minutes for a few hundred survivors).
DIFF_SCRIPT = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as exc:  # one odd mutant must not cost the others' diffs
        out[name] = f"(no diff: {exc!r})"
print(json.dumps(out))
"""


def survivor_diffs(copy: Path, env: dict, names: list[str]) -> dict[str, str]:
    """name -> `mutmut show` diff for NAMES, in one process; per-mutant `mutmut show` if that API is missing."""
    if not names:
        return {}
    p = subprocess.run([sys.executable, "-c", DIFF_SCRIPT], cwd=copy, env=env, input=json.dumps(names),
                       capture_output=True, text=True, timeout=600)
    if p.returncode == 0:
        try:
            return {n: d.strip() for n, d in json.loads(p.stdout.strip().splitlines()[-1]).items()}
        except (ValueError, IndexError):
            pass
    diffs = {}
    for name in names:
        d = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=copy, env=env,
                           capture_output=True, text=True, timeout=60)
        diffs[name] = d.stdout.strip()
    return diffs


def summarize(modules, tests, statuses: dict[str, str], diffs: dict[str, str], timed_out: bool,
              wall_s: float) -> dict:
    by_file: dict[str, dict] = {}
    for name, st in sorted(statuses.items()):
        f = by_file.setdefault(_module_of(name), {"total": 0, "killed": 0, "survived": [], "no_tests": [],
                                                   "not_checked": 0, "other": []})
        f["total"] += 1
        if st in KILLED:
            f["killed"] += 1
        elif st == "survived":
            f["survived"].append(name)
        elif st == "no tests":
            f["no_tests"].append(name)
        elif st == "not checked":
            f["not_checked"] += 1
        else:
            f["other"].append(f"{name}: {st}")
    return {"modules": list(modules), "tests": list(tests), "statuses": statuses, "by_file": by_file,
            "survivor_diffs": diffs, "bounded_out": timed_out, "wall_s": round(wall_s, 1),
            "inputs": inputs_hash(list(modules), list(tests)), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def merge_rerun(previous: dict, rerun: dict) -> dict:
    """The previous full result with the rerun mutants' new statuses (and diffs) laid over it.

    A mutant the rerun did not reach (cut short: "not checked") keeps its previous status, and stays carried over
    if it was (see `carry_over`); one the rerun checked is no longer carried over.
    """
    laid = {n: st for n, st in rerun["statuses"].items()
            if st != "not checked" or previous["statuses"].get(n, "not checked") == "not checked"}
    statuses = dict(previous["statuses"], **laid)
    diffs = {**previous.get("survivor_diffs", {}), **rerun["survivor_diffs"]}
    diffs = {n: d for n, d in diffs.items() if statuses.get(n) not in KILLED}
    merged = summarize(previous["modules"], previous["tests"], statuses, diffs, previous["bounded_out"],
                       previous["wall_s"] + rerun["wall_s"])
    merged["reruns"] = previous.get("reruns", 0) + 1
    carried = {n: o for n, o in carried_over(previous).items() if n not in laid}
    if carried:
        merged["carried_over"] = _origins(carried)
    if "sample" in previous:
        merged["sample"] = previous["sample"]
    return merged


def carry_over(previous: dict, bounded: dict) -> dict:
    """The group record after BOUNDED, a run cut short (its bound, Ctrl-C, SIGTERM), over PREVIOUS, the group's
    saved record: a short rerun (e.g. after the group's modules changed, when mutmut re-tests them from scratch)
    must not replace hours of results with the few it checked.

    Per mutant: a status BOUNDED checked wins; one it did not check keeps its PREVIOUS checked status, carried over
    (`carried_over` names the run it comes from: its `when` and `inputs` hash; stale when the group's inputs hash
    differently now). A mutant BOUNDED no longer lists (its function changed or went) is dropped, unless BOUNDED
    listed no mutant of that file at all (cut short before mutmut generated them); so is one of a module no longer
    in the group. A mutant only BOUNDED lists stays as BOUNDED says (e.g. not checked). A complete run is not passed
    here: it replaces the record.
    """
    new = bounded["statuses"]
    listed = {_module_of(n) for n in new}
    modules = set(bounded["modules"])
    origin = carried_over(previous)
    statuses = dict(new)
    carried: dict[str, tuple[str, str]] = {}
    for name, st in previous["statuses"].items():
        if st == "not checked" or new.get(name, "not checked") != "not checked":
            continue
        module = _module_of(name)
        if module not in modules or (name not in new and module in listed):
            continue
        statuses[name] = st
        carried[name] = origin.get(name, (previous["when"], previous["inputs"]))
    diffs = {n: d for n, d in previous.get("survivor_diffs", {}).items() if n in carried}
    merged = summarize(bounded["modules"], bounded["tests"], statuses, {**diffs, **bounded["survivor_diffs"]},
                       True, bounded["wall_s"])
    merged.update(when=bounded["when"], inputs=bounded["inputs"])
    if carried:
        merged["carried_over"] = _origins(carried)
    return merged


def carried_over(g: dict) -> dict[str, tuple[str, str]]:
    """Mutant -> (when, inputs hash) of the earlier run whose result the record G carries over for it (see
    `carry_over`); empty when G's own run checked every result in it."""
    return {n: (o["when"], o["inputs"]) for o in g.get("carried_over", []) for n in o["mutants"]}


def _origins(carried: dict[str, tuple[str, str]]) -> list[dict]:
    # saved by origin run (a few), not per mutant (thousands)
    by_run: dict[tuple[str, str], list[str]] = {}
    for name, run_id in sorted(carried.items()):
        by_run.setdefault(run_id, []).append(name)
    return [{"when": w, "inputs": h, "mutants": names} for (w, h), names in by_run.items()]


def draw_sample(statuses: dict[str, str], n: int, seed: int) -> list[str]:
    """N mutants drawn uniformly at random (seeded: the same draw for the same statuses) from the unreached ones.

    Why: mutmut goes through a group file by file, so a bounded run's checked mutants are the first files' ones;
    a random sample of the rest estimates the rest without bias (random mutant sampling)."""
    unreached = sorted(name for name, st in statuses.items() if st == "not checked")
    return random.Random(seed).sample(unreached, min(n, len(unreached)))


def plan_sample(prev: dict, size: int, seed: int) -> tuple[list[str], dict]:
    """(mutants to run, the group's sample record) for `--sample SIZE`: the sample grows to SIZE mutants drawn at
    random from the unreached ones; its draws a bounded run never checked run first (they are part of the random
    sample already), then new draws. The record keeps the first draw's seed and population."""
    smp = prev.get("sample")
    if smp is None or smp["seed"] != seed:  # a new seed: a fresh sample of what is unreached now
        old = [*smp.pop("previous", []), smp] if smp else []
        smp = {"seed": seed, "names": [], "population": sum(st == "not checked" for st in prev["statuses"].values())}
        if old:
            smp["previous"] = old
    drawn = set(smp["names"])
    pending = [n for n in smp["names"] if prev["statuses"].get(n) == "not checked"]
    rest = {n: st for n, st in prev["statuses"].items() if n not in drawn}
    new = draw_sample(rest, max(0, size - len(smp["names"])), seed)
    return pending + new, dict(smp, names=smp["names"] + new)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sound at small n and near 0 or 1, unlike p +- z*se)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_estimate(g: dict, equiv: set[tuple[str, str]]) -> dict | None:
    """The kill rate of the group's sampled mutants (non-equivalent), with its 95% Wilson interval: an estimate for
    the mutants still unreached. None when the group has no checked sample."""
    smp = g.get("sample")
    if not smp:
        return None
    st = g["statuses"]
    checked = [n for n in smp["names"] if st.get(n, "not checked") != "not checked"]
    killed = sum(st[n] in KILLED for n in checked)
    eq = sum(st[n] not in KILLED and _equivalent(n, equiv) for n in checked)
    non_eq = len(checked) - eq
    est = {"seed": smp["seed"], "population": smp["population"], "drawn": len(smp["names"]),
           "checked": len(checked), "killed": killed, "equivalent": eq,
           "unreached": sum(x == "not checked" for x in st.values()), "kill_rate_pct": None, "ci95_pct": None}
    if non_eq:
        lo, hi = _wilson(killed, non_eq)
        est["kill_rate_pct"] = round(100.0 * killed / non_eq, 1)
        est["ci95_pct"] = [round(100.0 * lo, 1), round(100.0 * hi, 1)]
    return est


EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.md"
EQUIV_RE = re.compile(r"`(x[_ǁ][^`]*__mutmut_\d+)`[^\n]*\*\*Equivalent\*\*")
FILE_HEADING_RE = re.compile(r"^###\s+`([^`]+\.py)`")


def equivalents(path: Path | None = None) -> set[tuple[str, str]]:
    """(file, mutant) pairs that tools/mutation_equivalents.md explains as equivalent.

    A survivor is listed under a `### `engine/....py`` heading, on a line naming the mutant and saying **Equivalent**.
    """
    p = path or EQUIVALENTS
    found: set[tuple[str, str]] = set()
    current = ""
    for line in (p.read_text().splitlines() if p.is_file() else []):
        m = FILE_HEADING_RE.match(line)
        if m:
            current = m.group(1)
        found |= {(current, name) for name in EQUIV_RE.findall(line)}
    return found


def _equivalent(name: str, equiv: set[tuple[str, str]]) -> bool:
    return (_module_of(name), name.rsplit(".", 1)[-1]) in equiv


def combine(out: Path, equiv_file: Path | None = None) -> dict:
    """Every group's latest result -> reports/mutation.{json,md}; a group whose inputs changed is marked stale.

    Per group: `fresh` results (checked by the group's latest run), `carried_over_results` (kept from an earlier
    run that a later bounded one did not check again) and `carried_over_stale` (those of them checked against
    inputs that hash differently now).
    """
    groups: dict[str, dict] = {}
    for name, (mods, tests) in GROUPS.items():
        f = out / "mutation" / f"{name}.json"
        if f.is_file():
            g = json.loads(f.read_text())
            now = inputs_hash(g["modules"], g["tests"])
            g["stale"] = g["inputs"] != now
            g["inputs_now"] = now
            carried = carried_over(g)
            g["fresh"] = sum(st != "not checked" for n, st in g["statuses"].items() if n not in carried)
            g["carried_over_results"] = len(carried)
            g["carried_over_stale"] = sum(h != now for _when, h in carried.values())
            groups[name] = g
    equiv = equivalents(equiv_file)
    for g in groups.values():
        g["sample_estimate"] = sample_estimate(g, equiv)
    tot = {"mutants": 0, "killed": 0, "survived": 0, "no_tests": 0, "other": 0, "not_checked": 0, "equivalent": 0}
    for g in groups.values():
        for name, st in g["statuses"].items():
            tot["mutants"] += 1
            if st in KILLED:
                tot["killed"] += 1
            elif _equivalent(name, equiv):
                tot["equivalent"] += 1
            elif st == "survived":
                tot["survived"] += 1
            elif st == "no tests":
                tot["no_tests"] += 1
            elif st == "not checked":
                tot["not_checked"] += 1
            else:
                tot["other"] += 1
    checked = tot["mutants"] - tot["not_checked"]
    tot["checked"] = checked
    tot["carried_over"] = sum(g["carried_over_results"] for g in groups.values())
    tot["carried_over_stale"] = sum(g["carried_over_stale"] for g in groups.values())
    tot["kill_rate_pct"] = round(100.0 * tot["killed"] / checked, 1) if checked else None
    non_eq = checked - tot["equivalent"]
    tot["kill_rate_non_equivalent_pct"] = round(100.0 * tot["killed"] / non_eq, 1) if non_eq else None
    missing = [n for n in GROUPS if n not in groups]
    summary = {"totals": tot, "groups": groups, "missing_groups": missing}
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "mutation.md").write_text(markdown(summary, equiv))
    return summary


def markdown(s: dict, equiv: set[tuple[str, str]]) -> str:
    t = s["totals"]
    if not t["checked"]:
        return ("# Mutation testing (mutmut) over engine/\n\nNo mutant checked yet: `make mutation` "
                "(or `python -m tripwire.tools.mutation --groups GROUP`).\n")
    lines = ["# Mutation testing (mutmut) over engine/", "",
             f"**Kill rate {t['kill_rate_non_equivalent_pct']}% of non-equivalent mutants** "
             f"({t['kill_rate_pct']}% of all checked): {t['killed']} killed of {t['checked']} checked; "
             f"{t['equivalent']} equivalent (tools/mutation_equivalents.md), {t['survived']} survived, "
             f"{t['no_tests']} reached by no test, {t['other']} other, {t['not_checked']} not reached.", ""]
    if t["carried_over"]:
        stale = (f" ({t['carried_over_stale']} stale: checked before the group's modules or tests changed)"
                 if t["carried_over_stale"] else "")
        lines += [f"{t['carried_over']} of the checked results are carried over{stale} from an earlier run that a "
                  f"later one, cut short by its bound, did not check again; a complete run of the group replaces "
                  f"them.", ""]
    if s["missing_groups"]:
        lines += [f"Groups never run: {', '.join(s['missing_groups'])} (`--groups NAME`).", ""]
    lines += ["| Group | Run | Inputs | Results | Mutants | Killed | Survived | No tests | Not checked | Wall |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, g in s["groups"].items():
        st = list(g["statuses"].values())
        lines.append(f"| {name} | {g['when']} | {'**stale**' if g['stale'] else 'current'} | {_results(g)} | "
                     f"{len(st)} | "
                     f"{sum(x in KILLED for x in st)} | {st.count('survived')} | {st.count('no tests')} | "
                     f"{st.count('not checked')} | {g['wall_s']:.0f}s{' (bounded)' if g['bounded_out'] else ''} |")
    for name, g in s["groups"].items():
        e = g.get("sample_estimate")
        if e and e["kill_rate_pct"] is not None:
            lines += ["", f"Group {name}: {e['drawn']} of the {e['population']} unreached mutants drawn at random "
                          f"(seed {e['seed']}) and {e['checked']} checked: {e['killed']} killed, {e['equivalent']} "
                          f"equivalent; kill rate of non-equivalent ones {e['kill_rate_pct']}% (95% CI "
                          f"{e['ci95_pct'][0]}-{e['ci95_pct'][1]}%), the estimate for the {e['unreached']} still "
                          f"unreached."]
    lines += ["", "| File | Mutants | Killed | Survived | No tests | Not checked |", "|---|---|---|---|---|---|"]
    for g in s["groups"].values():
        for f, d in sorted(g["by_file"].items()):
            lines.append(f"| `{f}` | {d['total']} | {d['killed']} | {len(d['survived'])} | {len(d['no_tests'])} | "
                         f"{d['not_checked']} |")
    lines += ["", "## Mutants not killed", ""]
    for g in s["groups"].values():
        carried = carried_over(g)
        for f, d in sorted(g["by_file"].items()):
            names = d["survived"] + d["no_tests"] + [o.split(":")[0] for o in d["other"]]
            if not names:
                continue
            lines.append(f"### {f} ({len(names)})")
            for name in names:
                tag = " (equivalent)" if _equivalent(name, equiv) else f" ({g['statuses'][name]})"
                if name in carried:
                    stale = ", stale" if carried[name][1] != g["inputs_now"] else ""
                    tag += f" (carried over from {carried[name][0]}{stale})"
                lines.append(f"- `{name}`{tag}")
                diff = g["survivor_diffs"].get(name)
                if diff:
                    body = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
                    lines += ["  ```diff", *[f"  {ln}" for ln in body[:8]], "  ```"]
            lines.append("")
    return "\n".join(lines) + "\n"


def _results(g: dict) -> str:
    """"N fresh, M carried over (K stale)": how many of a group's results its latest run checked."""
    text = f"{g['fresh']} fresh"
    if g["carried_over_results"]:
        text += f", {g['carried_over_results']} carried over"
        if g["carried_over_stale"]:
            text += f" ({g['carried_over_stale']} stale)"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="+", metavar="GROUP", help=f"groups to run (default all): {', '.join(GROUPS)}")
    ap.add_argument("--modules", nargs="+", help="ad hoc: modules to mutate (with --tests); not saved as a group")
    ap.add_argument("--tests", nargs="+", help="ad hoc: tests for --modules")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="rerun only the mutants the group's last result left alive (survived or no tests) "
                         "after new tests, except those tools/mutation_equivalents.md explains; a bounded run's "
                         "unreached ones are for a normal run")
    ap.add_argument("--mutants", nargs="+", metavar="NAME",
                    help="rerun only these mutants of the one group given (full or short names as in the report, "
                         "e.g. the ones new tests should kill)")
    ap.add_argument("--sample", type=int, metavar="N",
                    help="grow the group's random sample of unreached mutants to N and check it (after a bounded run; "
                         "a cut-short sample continues): the report estimates the kill rate of the ones still "
                         "unreached from it (95%% CI)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of --sample's draw (default 0); another seed starts a fresh sample of what is unreached")
    ap.add_argument("--fresh", action="store_true",
                    help="forget the groups' kept mutmut state (.tripwire_cache/mutation/GROUP) and start over (the "
                         "saved results stay, carried over, until a run of the group completes)")
    ap.add_argument("--combine", action="store_true", help="only rewrite reports/mutation.{json,md} from saved groups")
    ap.add_argument("--minutes", type=float, default=60.0, help="bound per group (default 60)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default=str(ROOT / "reports"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    unknown = [g for g in args.groups or [] if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    if bool(args.modules) != bool(args.tests):
        ap.error("--modules and --tests go together")
    if args.mutants and len(args.groups or []) != 1:
        ap.error("--mutants needs exactly one group (--groups NAME)")
    if args.combine:
        s = combine(out)
        _print_totals(s, out)
        return 0
    if not _have_mutmut():
        print("mutmut is not installed: pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    if args.modules:
        g = run(expand(args.modules), list(args.tests), args.minutes, args.jobs)
        (out / "mutation").mkdir(parents=True, exist_ok=True)
        (out / "mutation" / "adhoc.json").write_text(json.dumps(g, indent=2) + "\n")
        _print_group("adhoc", g)
        return 0
    failed: list[str] = []
    for i, name in enumerate(args.groups or list(GROUPS), 1):
        mods, tests = GROUPS[name]
        f = out / "mutation" / f"{name}.json"
        print(f"[{i}/{len(args.groups or GROUPS)}] group {name}", flush=True)
        prev = json.loads(f.read_text()) if f.is_file() else None
        if args.rerun_survivors or args.sample or args.mutants:
            if prev is None:
                print(f"no saved result for group {name}: run it once without --rerun-survivors/--sample/--mutants",
                      file=sys.stderr)
                return 2
            if args.mutants:
                by_short = {n.rsplit(".", 1)[-1]: n for n in prev["statuses"]}
                unknown = [m for m in args.mutants if m not in prev["statuses"] and m not in by_short]
                if unknown:
                    print(f"not mutants of group {name}: {', '.join(unknown)} (names as in reports/mutation.md)",
                          file=sys.stderr)
                    return 2
                names = [m if m in prev["statuses"] else by_short[m] for m in args.mutants]
            elif args.sample:
                names, prev["sample"] = plan_sample(prev, args.sample, args.seed)
            else:   # the alive ones only: what a bounded run never reached is for a normal run, which continues it
                alive = [n for n, st in prev["statuses"].items() if st not in KILLED and st != "not checked"]
                # an equivalent mutant survives every rerun, and survivors cost the most (every test reaching them)
                equiv = equivalents()
                names = [n for n in alive if not _equivalent(n, equiv)]
                if len(names) < len(alive):
                    print(f"{len(alive) - len(names)} explained as equivalent, not rerun", flush=True)
        try:
            if args.rerun_survivors or args.sample or args.mutants:
                g = merge_rerun(prev, run(prev["modules"], prev["tests"], args.minutes, args.jobs, only=names,
                                          workdir=WORK / name)) if names else prev
            else:
                if args.fresh:
                    shutil.rmtree(WORK / name, ignore_errors=True)
                g = run(expand(mods), list(tests), args.minutes, args.jobs, workdir=WORK / name)
                if prev is not None and g["bounded_out"]:   # cut short: keep what it did not check again
                    g = carry_over(prev, g)
                if prev is not None and "sample" in prev and not args.fresh:
                    g["sample"] = prev["sample"]
        except MutmutFailed as exc:
            print(f"error: group {name}: {exc}; its output above names the failing test (a test that fails under "
                  f"mutmut's stats run must be fixed or left out of the group); nothing saved", file=sys.stderr)
            failed.append(name)
            continue
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(g, indent=2) + "\n")
        _print_group(name, g)
    s = combine(out)
    _print_totals(s, out)
    return 1 if failed else 0


def _have_mutmut() -> bool:
    return shutil.which("mutmut") is not None or subprocess.run(
        [sys.executable, "-c", "import mutmut"], capture_output=True).returncode == 0


def _print_group(name: str, g: dict) -> None:
    st = list(g["statuses"].values())
    print(f"group {name}: {sum(x in KILLED for x in st)} killed, {st.count('survived')} survived, "
          f"{st.count('no tests')} without tests, {st.count('not checked')} not reached of {len(st)} "
          f"({g['wall_s']:.0f}s{', bounded' if g['bounded_out'] else ''})")
    carried = carried_over(g)
    if carried:
        print(f"  {len(carried)} carried over from an earlier run (this run, cut short, did not check them again)")
    for f, d in sorted(g["by_file"].items()):
        print(f"  {f:<32} {d['killed']:>4} killed  {len(d['survived']):>4} survived  {len(d['no_tests']):>4} no tests"
              f"  of {d['total']}")


def _print_totals(s: dict, out: Path) -> None:
    t = s["totals"]
    if not t["checked"]:
        print(f"\nno mutant checked yet: run a group (--groups {' '.join(GROUPS)})")
        print(f"wrote {out / 'mutation.md'} and mutation.json")
        return
    print(f"\nkill rate {t['kill_rate_non_equivalent_pct']}% of non-equivalent mutants ({t['kill_rate_pct']}% of all "
          f"checked): {t['killed']} killed / {t['checked']} checked, {t['equivalent']} equivalent, "
          f"{t['survived']} survived, {t['no_tests']} without tests, {t['not_checked']} not reached")
    for name, g in s["groups"].items():
        e = g.get("sample_estimate")
        if e and e["kill_rate_pct"] is not None:
            print(f"group {name}: {e['unreached']} mutants still unreached; a random sample of {e['checked']} of them "
                  f"was killed at {e['kill_rate_pct']}% of non-equivalent ones (95% CI {e['ci95_pct'][0]}-"
                  f"{e['ci95_pct'][1]}%)")
    if t["carried_over"]:
        print(f"{t['carried_over']} results carried over from earlier runs ({t['carried_over_stale']} stale): a "
              f"complete run of their group replaces them")
    stale = [n for n, g in s["groups"].items() if g["stale"]]
    if stale:
        print(f"stale (inputs changed since the run): {', '.join(stale)}")
    if s["missing_groups"]:
        print(f"never run: {', '.join(s['missing_groups'])}")
    print(f"wrote {out / 'mutation.md'} and mutation.json")


if __name__ == "__main__":
    sys.exit(main())
