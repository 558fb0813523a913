"""pytest plugin (entry point `pytest11: tripwire`): `pytest --tripwire` adds one item per enabled rule.

Inert unless `--tripwire` is given: importing this module costs nothing beyond pytest itself. The check runs
once per session (cached in .tripwire_cache/ like the CLI); each item fails with that rule's findings.
"""

from __future__ import annotations

import pytest

_RESULT_KEY = "_tripwire_result"


def pytest_addoption(parser):
    group = parser.getgroup("tripwire", "tripwire static invariant checks")
    group.addoption("--tripwire", action="store_true", default=False,
                    help="add one test item per enabled tripwire rule over the configured paths")
    group.addoption("--tripwire-config", default=None, help="config file (default: nearest pyproject.toml)")
    group.addoption("--tripwire-paths", default=None, help="comma-separated paths (default: config `paths`)")


class TripwireError(Exception):
    pass


class TripwireItem(pytest.Item):
    def __init__(self, *, rule_name: str, rule_code: str, **kw):
        super().__init__(**kw)
        self.rule_name = rule_name
        self.rule_code = rule_code
        self.add_marker("tripwire")

    def _result(self):
        cfg = self.config
        res = getattr(cfg, _RESULT_KEY, None)
        if res is None:
            from tripwire.invariants.checker import run

            tcfg, paths = cfg._tripwire_cfg
            res = run(tcfg, paths)
            setattr(cfg, _RESULT_KEY, res)
        return res

    def runtest(self):
        res = self._result()
        mine = [f for f in res.findings if f.rule == self.rule_name and f.active]
        if self.rule_name == "internal-error":
            mine = res.internal_errors
        if mine:
            lines = [f"{f.path}:{f.line}:{f.col}: {f.code} {f.rule} {f.message}" for f in mine]
            raise TripwireError("\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, TripwireError):
            return f"tripwire {self.rule_code} {self.rule_name} violated:\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"tripwire {self.rule_code} {self.rule_name}"


class TripwireCollector(pytest.Collector):
    def collect(self):
        for rule in self.config._tripwire_rules:
            yield TripwireItem.from_parent(self, name=f"{rule.code}-{rule.name}", rule_name=rule.name,
                                           rule_code=rule.code)


def pytest_configure(config):
    config.addinivalue_line("markers", "tripwire: static invariant check added by `pytest --tripwire`")


@pytest.hookimpl(tryfirst=True)  # before -k / -m / --deselect filtering, so those apply to our items
def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("--tripwire"):
        return
    from tripwire.invariants.config import ConfigError, load

    try:
        tcfg = load(config.getoption("--tripwire-config"), start=config.rootpath)
    except ConfigError as exc:
        raise pytest.UsageError(f"tripwire: {exc}") from None
    raw = config.getoption("--tripwire-paths")
    paths = [str(tcfg.root / p.strip()) for p in raw.split(",") if p.strip()] if raw else \
        [str(tcfg.root / p) for p in tcfg.paths]
    config._tripwire_cfg = (tcfg, paths)
    config._tripwire_rules = tcfg.enabled_rules()
    col = TripwireCollector.from_parent(session, name="tripwire", path=tcfg.root / "pyproject.toml",
                                       nodeid="tripwire")
    items.extend(col.collect())
