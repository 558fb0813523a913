"""`make mutation`'s bookkeeping (tools/mutation.py): groups cover the engine, results go stale, reruns merge.

mutmut itself is not run here (minutes per group; `make mutation` does that): these tests pin what the tool
decides from mutmut's statuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tripwire.tools import mutation

ROOT = Path(mutation.__file__).resolve().parent.parent


def test_every_engine_module_belongs_to_exactly_one_group():
    owners: dict[str, list[str]] = {}
    for name, (mods, _tests) in mutation.GROUPS.items():
        for m in mutation.expand(mods):
            owners.setdefault(m, []).append(name)
    engine = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "engine").rglob("*.py"))
    assert [m for m in engine if m not in owners] == []
    assert {m: g for m, g in owners.items() if len(g) > 1} == {}
    assert all((ROOT / m).is_file() for m in owners), "a group names a module that does not exist"
    for _mods, tests in mutation.GROUPS.values():
        assert all((ROOT / t).exists() for t in tests)


def test_module_of_maps_mutant_names_back_to_files():
    assert mutation._module_of("tripwire.engine.admission.xǁAdmissionControllerǁadmit__mutmut_3") == \
        "engine/admission.py"
    assert mutation._module_of("tripwire.engine.cache.prefix.x_plan__mutmut_12") == "engine/cache/prefix.py"


def _group(statuses, **kw):
    return mutation.summarize(["engine/ids.py"], ["tests/engine/test_ids.py"], statuses, kw.get("diffs", {}),
                              False, 1.0)


def test_timeouts_and_crashes_count_as_killed_and_no_tests_does_not():
    g = _group({"tripwire.engine.ids.x_a__mutmut_1": "killed", "tripwire.engine.ids.x_a__mutmut_2": "timeout",
                "tripwire.engine.ids.x_a__mutmut_3": "segfault", "tripwire.engine.ids.x_a__mutmut_4": "survived",
                "tripwire.engine.ids.x_a__mutmut_5": "no tests", "tripwire.engine.ids.x_a__mutmut_6": "suspicious"})
    f = g["by_file"]["engine/ids.py"]
    assert f["killed"] == 3
    assert f["survived"] == ["tripwire.engine.ids.x_a__mutmut_4"]
    assert f["no_tests"] == ["tripwire.engine.ids.x_a__mutmut_5"]
    assert f["other"] == ["tripwire.engine.ids.x_a__mutmut_6: suspicious"]


def test_a_rerun_lays_new_statuses_over_the_previous_result():
    prev = _group({"tripwire.engine.ids.x_a__mutmut_1": "killed", "tripwire.engine.ids.x_a__mutmut_2": "survived",
                   "tripwire.engine.ids.x_a__mutmut_3": "survived"},
                  diffs={"tripwire.engine.ids.x_a__mutmut_2": "-a\n+b", "tripwire.engine.ids.x_a__mutmut_3": "-c\n+d"})
    rerun = _group({"tripwire.engine.ids.x_a__mutmut_2": "killed", "tripwire.engine.ids.x_a__mutmut_3": "survived"},
                   diffs={"tripwire.engine.ids.x_a__mutmut_3": "-c\n+d"})
    merged = mutation.merge_rerun(prev, rerun)
    assert merged["statuses"]["tripwire.engine.ids.x_a__mutmut_2"] == "killed"
    assert merged["by_file"]["engine/ids.py"]["survived"] == ["tripwire.engine.ids.x_a__mutmut_3"]
    assert set(merged["survivor_diffs"]) == {"tripwire.engine.ids.x_a__mutmut_3"}
    assert merged["reruns"] == 1


def test_combine_counts_equivalents_apart_and_marks_changed_inputs_stale(tmp_path, monkeypatch):
    equiv = tmp_path / "eq.md"
    equiv.write_text("### `engine/ids.py`\n"
                     "- `x_a__mutmut_4`: `1` -> `2`. **Equivalent**: nothing can observe it.\n"
                     "- `x_a__mutmut_3`: **Killed** by a test.\n"
                     "### `engine/types.py`\n"
                     "- `x_a__mutmut_3`: **Equivalent** (same short name, another file: must not count)\n")
    g = _group({"tripwire.engine.ids.x_a__mutmut_1": "killed", "tripwire.engine.ids.x_a__mutmut_2": "killed",
                "tripwire.engine.ids.x_a__mutmut_3": "survived", "tripwire.engine.ids.x_a__mutmut_4": "survived"})
    (tmp_path / "mutation").mkdir()
    monkeypatch.setattr(mutation, "GROUPS", {"ids": (("engine/ids.py",), ("tests/engine/test_ids.py",))})
    (tmp_path / "mutation" / "ids.json").write_text(json.dumps(g))
    s = mutation.combine(tmp_path, equiv)
    t = s["totals"]
    assert (t["killed"], t["equivalent"], t["survived"], t["checked"]) == (2, 1, 1, 4)
    assert t["kill_rate_pct"] == 50.0 and t["kill_rate_non_equivalent_pct"] == pytest.approx(66.7)
    assert s["groups"]["ids"]["stale"] is False
    g["inputs"] = "0" * 16          # the inputs hashed differently when it ran
    (tmp_path / "mutation" / "ids.json").write_text(json.dumps(g))
    assert mutation.combine(tmp_path, equiv)["groups"]["ids"]["stale"] is True
    assert "**stale**" in (tmp_path / "mutation.md").read_text()


def test_equivalents_file_names_only_mutants_marked_equivalent():
    names = mutation.equivalents()
    assert ("engine/worker.py", "xǁMLXWorkerǁstop__mutmut_1") in names
    assert ("engine/worker.py", "xǁMLXWorkerǁrequest_stop__mutmut_8") not in names   # killed by a test
    for file, _name in names:
        assert (ROOT / file).is_file()


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        mutation.main(["--groups", "nope"])
    assert e.value.code == 2
    assert "known:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mutation.main(["--modules", "engine/ids.py"])
    assert e.value.code == 2


def test_mutation_runs_order_tests_fastest_first_from_mutmuts_stats(tmp_path, monkeypatch):
    """A killed mutant should die in its cheapest test: the suite's slow-first order is undone in mutation runs."""
    from tripwire.tools import mutation_order

    class Item:
        def __init__(self, nodeid):
            self.nodeid = nodeid

    items = [Item("t::slow"), Item("t::new"), Item("t::fast"), Item("t::mid")]
    monkeypatch.chdir(tmp_path)
    mutation_order.pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == ["t::slow", "t::new", "t::fast", "t::mid"]   # no stats: unchanged
    (tmp_path / "mutmut-stats.json").write_text(json.dumps(
        {"duration_by_test": {"t::slow": 9.0, "t::fast": 0.01, "t::mid": 0.5}}))
    mutation_order.pytest_collection_modifyitems(None, None, items)
    assert [i.nodeid for i in items] == ["t::new", "t::fast", "t::mid", "t::slow"]
    (tmp_path / "mutmut-stats.json").write_text("{not json")
    assert mutation_order.durations() == {}


def test_staging_keeps_unchanged_files_and_refreshes_changed_ones_for_mutmut(tmp_path):
    """A kept copy continues a bounded run: unchanged files keep their mtime (mutmut keeps their results),
    changed ones get new content and a newer mtime (mutmut redoes them), files mutmut copies once are refreshed in
    its mirror, and files gone from the project go from both."""
    import os

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "tripwire" / "engine").mkdir(parents=True)
    (src / "tests").mkdir()
    (src / "tripwire" / "engine" / "a.py").write_text("A = 1\n")
    (src / "tests" / "test_a.py").write_text("def test(): pass\n")
    (src / "tests" / "test_gone.py").write_text("")
    assert sorted(mutation.sync(src, dst)) == ["tests/test_a.py", "tests/test_gone.py", "tripwire/engine/a.py"]
    (dst / "mutants" / "tests").mkdir(parents=True)                       # what mutmut made of it
    (dst / "mutants" / "tests" / "test_a.py").write_text("def test(): pass\n")
    (dst / "mutants" / "tests" / "test_gone.py").write_text("")
    old = 1_000_000_000
    for f in dst.rglob("*.py"):
        os.utime(f, (old, old))
    assert mutation.sync(src, dst) == []                                   # nothing changed: nothing touched
    assert os.path.getmtime(dst / "tripwire" / "engine" / "a.py") == old
    (src / "tripwire" / "engine" / "a.py").write_text("A = 2\n")
    (src / "tests" / "test_a.py").write_text("def test(): assert 1\n")
    (src / "tests" / "test_gone.py").unlink()
    assert sorted(mutation.sync(src, dst)) == ["tests/test_a.py", "tests/test_gone.py", "tripwire/engine/a.py"]
    assert (dst / "tripwire" / "engine" / "a.py").read_text() == "A = 2\n"
    assert os.path.getmtime(dst / "tripwire" / "engine" / "a.py") > old
    assert (dst / "mutants" / "tests" / "test_a.py").read_text() == "def test(): assert 1\n"
    assert not (dst / "tests" / "test_gone.py").exists() and not (dst / "mutants" / "tests" / "test_gone.py").exists()


def test_a_changed_configuration_makes_mutmut_collect_its_stats_again(tmp_path):
    """Which tests reach which function depends on the configuration (e.g. the fixture-stats plugin): stats
    collected under another one would keep sending mutants to too few tests."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "pyproject.toml").write_text("[tool.mutmut]\n")
    mutation.sync(src, dst)
    (dst / "mutants").mkdir()
    stats = dst / "mutants" / "mutmut-stats.json"
    stats.write_text("{}")
    (src / "other.txt").write_text("x")
    mutation.sync(src, dst)
    assert stats.exists()                                                 # the configuration is unchanged
    (src / "pyproject.toml").write_text("[tool.mutmut]\npytest_add_cli_args = ['-p', 'plugin']\n")
    assert "pyproject.toml" in mutation.sync(src, dst)
    assert not stats.exists()
    assert "plugin" in (dst / "mutants" / "pyproject.toml").read_text()


def test_a_changed_mutated_module_makes_mutmut_collect_its_stats_again(tmp_path):
    """mutmut collects again only for tests it has not seen: a module's new functions (a new module of the group, a
    rewritten one) were left with no tests at all ("no tests", counted as not killed: 174 mutants of a new
    engine/server/backoff.py that tests/server/test_server_backoff.py reaches)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "tripwire" / "engine").mkdir(parents=True)
    (src / "tripwire" / "engine" / "a.py").write_text("def f(): pass\n")
    (src / "tripwire" / "engine" / "other.py").write_text("def g(): pass\n")
    mutation.sync(src, dst, mutated={"tripwire/engine/a.py"})
    (dst / "mutants").mkdir()
    stats = dst / "mutants" / "mutmut-stats.json"
    stats.write_text("{}")
    (src / "tripwire" / "engine" / "other.py").write_text("def g(): return 1\n")
    mutation.sync(src, dst, mutated={"tripwire/engine/a.py"})
    assert stats.exists()                                                 # not a mutated module
    (src / "tripwire" / "engine" / "a.py").write_text("def f(): pass\n\n\ndef h(): pass\n")
    mutation.sync(src, dst, mutated={"tripwire/engine/a.py"})
    assert not stats.exists()


def test_mutation_runs_load_the_fixture_stats_plugin():
    assert '"-p", "tripwire.tools.mutation_fixture_stats"' in mutation._config(["engine/ids.py"], ["tests/engine"])


def test_combine_with_no_results_says_what_to_run(tmp_path, capsys):
    assert mutation.main(["--combine", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no mutant checked yet" in out and "None" not in out
    assert "No mutant checked yet" in (tmp_path / "mutation.md").read_text()


def test_a_group_whose_mutmut_run_fails_is_an_error_and_keeps_its_last_result(tmp_path, monkeypatch, capsys):
    """mutmut stopping on its own (e.g. a test failing in its stats run) must not be saved as "0 killed,
    everything not reached": exit 1, an error naming the group, and the group's previous result untouched."""
    def failing(*a, **kw):
        raise mutation.MutmutFailed("mutmut exited with 1 before testing every mutant")

    monkeypatch.setattr(mutation, "run", failing)
    monkeypatch.setattr(mutation.shutil, "which", lambda name: "/usr/bin/mutmut")
    (tmp_path / "mutation").mkdir()
    previous = json.dumps(_group({"tripwire.engine.ids.x_a__mutmut_1": "killed"}))
    (tmp_path / "mutation" / "cli.json").write_text(previous)
    assert mutation.main(["--groups", "cli", "--out", str(tmp_path)]) == 1
    assert "error: group cli: mutmut exited with 1" in capsys.readouterr().err
    assert (tmp_path / "mutation" / "cli.json").read_text() == previous


def test_rerun_survivors_reruns_the_alive_not_what_a_bounded_run_never_reached(tmp_path, monkeypatch, capsys):
    """After new tests, the rerun is about the mutants that survived or had no test; the ones a bounded run never
    reached are for a normal run (which continues from the kept state), not for a rerun that would spend its
    bound on them."""
    asked = []

    def fake_run(modules, tests, minutes, jobs, only=None, workdir=None):
        asked.extend(only)
        return _group({n: "killed" for n in only})

    monkeypatch.setattr(mutation, "run", fake_run)
    monkeypatch.setattr(mutation.shutil, "which", lambda name: "/usr/bin/mutmut")
    (tmp_path / "mutation").mkdir()
    prev = _group({"tripwire.engine.ids.x_a__mutmut_1": "killed", "tripwire.engine.ids.x_a__mutmut_2": "survived",
                   "tripwire.engine.ids.x_a__mutmut_3": "no tests", "tripwire.engine.ids.x_a__mutmut_4": "not checked"})
    (tmp_path / "mutation" / "core.json").write_text(json.dumps(prev))
    assert mutation.main(["--groups", "core", "--rerun-survivors", "--out", str(tmp_path)]) == 0
    assert sorted(asked) == ["tripwire.engine.ids.x_a__mutmut_2", "tripwire.engine.ids.x_a__mutmut_3"]


# Runs `_mutmut` in a child process that receives a real signal, with Python's own SIGINT handler: what a Ctrl-C
# reaches in a foreground run. A test suite started as a background job (`cmd &` in a script) inherits SIGINT
# ignored, and Python then installs no handler: the in-process `_thread.interrupt_main()` this test used was a
# no-op there, and the run waited out mutmut's 5-minute bound (a "flake" whenever CI ran in the background).
_RUN_MUTMUT = """
import os, signal, sys
from pathlib import Path
from tripwire.tools import mutation
signal.signal(signal.SIGINT, signal.default_int_handler)
before = signal.getsignal(signal.SIGTERM)
stopped = mutation._mutmut(Path(sys.argv[1]), dict(os.environ), ["run"], minutes=5)
print("stopped" if stopped else "finished", "handler-restored" if signal.getsignal(signal.SIGTERM) == before else
      "handler-changed", flush=True)
"""


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_mutmut_and_keeps_the_run(tmp_path, how):
    """Ctrl-C (SIGINT) during a long group run, or SIGTERM (`kill PID`: a background run, where the shell ignores
    SIGINT), stops mutmut (its whole process group) and returns as a bound would: the results mutmut saved so far
    still make the group's report, instead of a traceback and nothing written."""
    import os
    import signal
    import subprocess
    import sys
    stub = tmp_path / "stub" / "mutmut"
    stub.mkdir(parents=True)
    fifo = tmp_path / "up"
    os.mkfifo(fifo)
    (stub / "__init__.py").write_text("")
    (stub / "__main__.py").write_text("import os, signal\n"
                                      "with open(os.environ['STUB_FIFO'], 'w') as f:\n"
                                      "    f.write(str(os.getpid()))\n"
                                      "signal.pause()\n")
    env = dict(os.environ, PYTHONPATH=str(stub.parent), STUB_FIFO=str(fifo))
    run = subprocess.Popen([sys.executable, "-c", _RUN_MUTMUT, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    stub_pid = None
    try:
        with open(fifo) as f:  # blocks until the stub runs (pytest-timeout bounds it)
            stub_pid = int(f.read())
        run.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGTERM)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert out.split()[-2:] == ["stopped", "handler-restored"], (out, err)  # the caller's SIGTERM handler again
        if how == "ctrl-c":
            assert "interrupted: stopping mutmut" in out
        with pytest.raises(ProcessLookupError):  # mutmut's whole group was stopped (and reaped)
            os.kill(stub_pid, 0)
        stub_pid = None
    finally:  # a failed run must not leave the stub (it waits in signal.pause() forever) or the runner behind
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if stub_pid is not None:
            try:
                os.killpg(stub_pid, signal.SIGKILL)  # its own session: only that group
            except ProcessLookupError:
                pass


def _ids(n):
    return [f"tripwire.engine.ids.x_a__mutmut_{i}" for i in range(1, n + 1)]


def test_a_sample_is_drawn_at_random_from_the_unreached_mutants_only_and_is_reproducible():
    names = _ids(10)
    statuses = {n: ("not checked" if i % 2 else "killed") for i, n in enumerate(names)}
    a = mutation.draw_sample(statuses, 3, seed=7)
    assert a == mutation.draw_sample(dict(reversed(statuses.items())), 3, seed=7)  # order-independent
    assert len(a) == 3 and len(set(a)) == 3 and all(statuses[n] == "not checked" for n in a)
    assert sorted(mutation.draw_sample(statuses, 99, seed=7)) == sorted(n for n in names if statuses[n] == "not checked")
    assert mutation.draw_sample(statuses, 3, seed=8) != a or len({tuple(mutation.draw_sample(statuses, 3, seed=s))
                                                                  for s in range(5)}) > 1


def test_the_unreached_kill_rate_is_estimated_from_the_sample_with_a_wilson_interval():
    names = _ids(60)
    statuses = {n: "not checked" for n in names}
    sample = names[:40]
    for i, n in enumerate(sample):   # 36 killed, 2 equivalent survivors, 2 real survivors
        statuses[n] = "killed" if i < 36 else "survived"
    g = _group(statuses)
    g["sample"] = {"seed": 0, "names": sample, "population": 60}
    equiv = {("engine/ids.py", n.rsplit(".", 1)[-1]) for n in sample[36:38]}
    est = mutation.sample_estimate(g, equiv)
    assert est["drawn"] == 40 and est["checked"] == 40 and est["killed"] == 36 and est["equivalent"] == 2
    assert est["kill_rate_pct"] == 94.7                      # 36 / 38 non-equivalent
    assert est["ci95_pct"] == [82.7, 98.5]                   # Wilson score interval, z = 1.96
    assert est["unreached"] == 20


def test_a_sampled_group_shows_its_estimate_in_the_report(tmp_path):
    names = _ids(4)
    g = _group({names[0]: "killed", names[1]: "killed", names[2]: "not checked", names[3]: "not checked"})
    g["sample"] = {"seed": 3, "names": names[:2], "population": 4}
    (tmp_path / "mutation").mkdir()
    (tmp_path / "mutation" / "core.json").write_text(json.dumps(g))
    s = mutation.combine(tmp_path, equiv_file=tmp_path / "none.md")
    md = (tmp_path / "mutation.md").read_text()
    assert s["groups"]["core"]["sample_estimate"]["kill_rate_pct"] == 100.0
    assert "2 of the 4 unreached mutants drawn at random (seed 3)" in md
    assert "2 still unreached" in md


def test_a_sample_continues_to_its_size_its_unchecked_draws_first():
    names = _ids(20)
    statuses = {n: "not checked" for n in names}
    run1, smp = mutation.plan_sample({"statuses": statuses}, 6, seed=2)
    assert len(run1) == 6 and smp["names"] == run1 and smp["population"] == 20 and smp["seed"] == 2
    for n in run1[:2]:          # a bounded run checked two of the six
        statuses[n] = "killed"
    run2, smp2 = mutation.plan_sample({"statuses": statuses, "sample": smp}, 6, seed=2)
    assert run2 == run1[2:] and smp2 == smp        # the rest of the same draw, nothing new
    run3, smp3 = mutation.plan_sample({"statuses": statuses, "sample": smp}, 9, seed=2)
    assert run3[:4] == run1[2:] and len(run3) == 7 and len(set(run3)) == 7
    assert smp3["names"][:6] == run1 and len(smp3["names"]) == 9 and set(run3[4:]).isdisjoint(run1)


def test_named_mutants_are_rerun_and_laid_over_the_group(tmp_path, monkeypatch, capsys):
    """`--mutants NAME...`: after new tests, rerun just the mutants they should kill (hand-picked, e.g. a random
    sample's survivors) instead of every alive one; unknown names are a usage error that names them."""
    names = _ids(3)
    prev = _group({names[0]: "killed", names[1]: "survived", names[2]: "not checked"})
    prev["modules"], prev["tests"] = ["engine/ids.py"], ["tests/engine/test_ids.py"]
    (tmp_path / "mutation").mkdir()
    (tmp_path / "mutation" / "core.json").write_text(json.dumps(prev))
    asked: list = []

    def fake_run(modules, tests, minutes, jobs, only=None, workdir=None):
        asked.append(only)
        return _group({n: "killed" for n in only})
    monkeypatch.setattr(mutation, "run", fake_run)
    monkeypatch.setattr(mutation, "_have_mutmut", lambda: True)
    short = names[1].rsplit(".", 1)[1]
    assert mutation.main(["--groups", "core", "--mutants", short, "--out", str(tmp_path)]) == 0
    assert asked == [[names[1]]]
    saved = json.loads((tmp_path / "mutation" / "core.json").read_text())
    assert saved["statuses"] == {names[0]: "killed", names[1]: "killed", names[2]: "not checked"}
    assert mutation.main(["--groups", "core", "--mutants", "x_nope__mutmut_1", "--out", str(tmp_path)]) == 2
    assert "x_nope__mutmut_1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:   # one group at a time
        mutation.main(["--groups", "core", "cache", "--mutants", short, "--out", str(tmp_path)])
    assert e.value.code == 2


def test_rerun_survivors_skips_the_mutants_explained_as_equivalent(tmp_path, monkeypatch, capsys):
    """An equivalent mutant survives every rerun, and a survivor is the costliest mutant to run (every test that
    reaches it): the rerun after new tests leaves out what tools/mutation_equivalents.md explains."""
    asked = []

    def fake_run(modules, tests, minutes, jobs, only=None, workdir=None):
        asked.extend(only)
        return _group({n: "survived" for n in only})

    monkeypatch.setattr(mutation, "run", fake_run)
    monkeypatch.setattr(mutation, "_have_mutmut", lambda: True)
    eq = tmp_path / "equivalents.md"
    eq.write_text("### `engine/ids.py`\n\n- `x_a__mutmut_2`: a changed default. **Equivalent**: never used.\n")
    monkeypatch.setattr(mutation, "EQUIVALENTS", eq)
    (tmp_path / "mutation").mkdir()
    prev = _group({"tripwire.engine.ids.x_a__mutmut_1": "killed", "tripwire.engine.ids.x_a__mutmut_2": "survived",
                   "tripwire.engine.ids.x_a__mutmut_3": "survived"})
    (tmp_path / "mutation" / "core.json").write_text(json.dumps(prev))
    assert mutation.main(["--groups", "core", "--rerun-survivors", "--out", str(tmp_path)]) == 0
    assert asked == ["tripwire.engine.ids.x_a__mutmut_3"]
    assert "1 explained as equivalent, not rerun" in capsys.readouterr().out


def test_a_new_seed_draws_a_fresh_sample_and_keeps_the_old_one_on_record():
    """Tests written for a sample's survivors make that sample's rate an overestimate of the rest: a new seed
    starts a fresh, independent sample of what is still unreached (the old one stays on record)."""
    names = _ids(30)
    statuses = {n: "not checked" for n in names}
    first, smp = mutation.plan_sample({"statuses": statuses}, 5, seed=1)
    for n in first:
        statuses[n] = "survived"
    again, smp2 = mutation.plan_sample({"statuses": statuses, "sample": smp}, 5, seed=2)
    assert len(again) == 5 and set(again).isdisjoint(first)
    assert smp2["seed"] == 2 and smp2["names"] == again and smp2["population"] == 25
    assert smp2["previous"] == [smp]
