"""`[tool.tripwire]` configuration: loading, validation (loud errors), rule selection."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import all_rules, get_rule

DEFAULT_EXCLUDE = [".git", ".venv", "venv", ".tox", ".nox", "__pycache__", "build", "dist", ".tripwire_cache",
                   "node_modules", ".hypothesis", ".pytest_cache", ".mypy_cache", "*.egg-info"]
DEFAULT_TEST_PATTERNS = ["tests/*", "*/tests/*", "test_*.py", "*/test_*.py", "*_test.py", "conftest.py",
                         "*/conftest.py"]
TOP_KEYS = {"paths", "exclude", "extend-exclude", "select", "ignore", "per-file-ignores", "test-patterns",
            "cache-dir", "baseline", "parse-all", "rules"}
RULE_META_KEYS = {"enabled", "severity"}


class ConfigError(Exception):
    """A configuration problem: reported on stderr, exit status 2."""


@dataclass
class Config:
    root: Path
    source: str | None = None
    paths: list[str] = field(default_factory=lambda: ["."])
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    test_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_TEST_PATTERNS))
    cache_dir: str = ".tripwire_cache"
    baseline: str | None = None
    parse_all: bool = False
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- rule selection ---------------------------------------------------------------------------
    def enabled_rules(self) -> list:
        out = []
        selected = None if self.select is None else {_canon(s) for s in self.select}
        ignored = {_canon(s) for s in self.ignore}
        for cls in all_rules():
            table = self.rules.get(cls.name, {})
            if cls.name in ignored or ("ALL" in ignored and cls.name not in ("parse-error", "internal-error")):
                continue
            if "enabled" in table:
                on = table["enabled"]
            elif selected is not None:
                # parse-error / internal-error are never hidden: the checker must say what it could not check
                on = "ALL" in selected or cls.name in selected or cls.name in ("parse-error", "internal-error")
            else:
                on = cls.default_enabled or cls.name in self.rules
            if not on:
                continue
            opts = {k: v for k, v in table.items() if k not in RULE_META_KEYS}
            rule = cls(opts)
            if "severity" in table:
                rule.severity = table["severity"]
            out.append(rule)
        return out

    def is_test(self, rel: str) -> bool:
        base = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in self.test_patterns)

    def is_excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        for pat in self.exclude:
            if fnmatch.fnmatchcase(rel, pat):
                return True
            if "/" not in pat and any(fnmatch.fnmatchcase(p, pat) for p in parts):
                return True
        return False

    def ignored_for(self, rel: str) -> set[str]:
        out: set[str] = set()
        base = rel.rsplit("/", 1)[-1]
        for pat, names in self.per_file_ignores.items():
            if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(base, pat):
                out.update(_canon(n) for n in names)
        return out

    def fingerprint(self, rules: list) -> str:
        """Identifies everything that changes per-file results (for the cache key)."""
        blob = json.dumps({
            "rules": sorted((r.name, r.severity, json.dumps(r.opts, sort_keys=True, default=str)) for r in rules),
            "tests": self.test_patterns, "parse_all": self.parse_all,
        }, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _canon(name: str) -> str:
    """Rule codes (TW101) are accepted wherever names are."""
    r = get_rule(name)
    return r.name if r is not None else name


def _check_rule_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or (name != "ALL" and get_rule(name) is None):
        raise ConfigError(f"{where}: unknown rule {name!r} (see `tripwire rules`)")


def _str_list(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}: expected a list of strings, got {v!r}")
    return v


def from_table(table: dict, root: Path, source: str | None) -> Config:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [tool.tripwire] must be a table")
    unknown = set(table) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [tool.tripwire]: {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(TOP_KEYS))}")
    cfg = Config(root=root, source=source)
    if "paths" in table:
        cfg.paths = _str_list(table["paths"], "paths")
    if "exclude" in table:
        cfg.exclude = _str_list(table["exclude"], "exclude")
    if "extend-exclude" in table:
        cfg.exclude = cfg.exclude + _str_list(table["extend-exclude"], "extend-exclude")
    if "select" in table:
        cfg.select = _str_list(table["select"], "select")
        for n in cfg.select:
            _check_rule_name(n, "select")
    if "ignore" in table:
        cfg.ignore = _str_list(table["ignore"], "ignore")
        for n in cfg.ignore:
            _check_rule_name(n, "ignore")
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError("per-file-ignores: expected a table of glob -> [rule names]")
        for pat, names in pfi.items():
            for n in _str_list(names, f"per-file-ignores.{pat!r}"):
                _check_rule_name(n, f"per-file-ignores.{pat!r}")
        cfg.per_file_ignores = dict(pfi)
    if "test-patterns" in table:
        cfg.test_patterns = _str_list(table["test-patterns"], "test-patterns")
    if "cache-dir" in table:
        if not isinstance(table["cache-dir"], str):
            raise ConfigError("cache-dir: expected a string")
        cfg.cache_dir = table["cache-dir"]
    if "baseline" in table:
        if not isinstance(table["baseline"], str):
            raise ConfigError("baseline: expected a string")
        cfg.baseline = table["baseline"]
    if "parse-all" in table:
        if not isinstance(table["parse-all"], bool):
            raise ConfigError("parse-all: expected a boolean")
        cfg.parse_all = table["parse-all"]
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise ConfigError("rules: expected a table of [tool.tripwire.rules.<name>] tables")
    for name, opts in rules.items():
        cls = get_rule(name)
        if cls is None:
            raise ConfigError(f"[tool.tripwire.rules.{name}]: unknown rule {name!r} (see `tripwire rules`)")
        if not isinstance(opts, dict):
            raise ConfigError(f"[tool.tripwire.rules.{name}]: expected a table")
        clean: dict[str, Any] = {}
        for k, v in opts.items():
            where = f"[tool.tripwire.rules.{cls.name}] {k}"
            if k == "enabled":
                if not isinstance(v, bool):
                    raise ConfigError(f"{where}: expected a boolean, got {v!r}")
            elif k == "severity":
                if v not in ("error", "warning", "info"):
                    raise ConfigError(f"{where}: expected one of error|warning|info, got {v!r}")
            elif k not in cls.options:
                raise ConfigError(f"{where}: unknown option; {cls.name} accepts: "
                                  f"{', '.join(sorted(cls.options)) or '(none)'}")
            else:
                try:
                    v = cls.options[k].validate(v)
                    validator = getattr(cls, "validate_option", None)
                    if validator is not None:
                        v = validator(k, v)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
            clean[k] = v
        cfg.rules[cls.name] = clean
    return cfg


@dataclass
class Discovery:
    """Where the config for a path comes from: `path` is the winning file (None: defaults apply), `skipped`
    the pyproject.toml files without a `[tool.tripwire]` table passed on the way up."""

    start: Path
    path: Path | None
    skipped: list[Path] = field(default_factory=list)


def _read_toml(path: Path) -> dict:
    import tomllib  # here: a run that finds no TOML file (no config) never pays for the parser's import

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read TOML: {exc}") from None


def _has_tripwire_table(data: dict) -> bool:
    tool = data.get("tool")
    return isinstance(tool, dict) and "tripwire" in tool


def discover_config(start: Path) -> Discovery:
    """The config that applies to `start` (a file or directory), like ruff: walking up from it, the first
    directory with a `tripwire.toml`, or a `pyproject.toml` that has a `[tool.tripwire]` table, wins
    (`tripwire.toml` first within one directory). A pyproject.toml without the table never wins.

    Raises:
        ConfigError: a pyproject.toml met on the way is not valid TOML.
    """
    cur = Path(os.path.abspath(start))
    if not cur.is_dir():
        cur = cur.parent
    found = Discovery(start=cur, path=None)
    for d in (cur, *cur.parents):
        t = d / "tripwire.toml"
        if t.is_file():
            found.path = t
            return found
        p = d / "pyproject.toml"
        if p.is_file():
            if _has_tripwire_table(_read_toml(p)):
                found.path = p
                return found
            found.skipped.append(p)
    return found


def load(config_file: str | os.PathLike | None = None, start: Path | None = None) -> Config:
    """Load from `config_file` (pyproject.toml with [tool.tripwire], or a TOML file whose top level is the
    config), or discover the config that applies to `start` (default: cwd; see `discover_config`). With no
    config found, the defaults apply, rooted at `start`.

    Raises:
        ConfigError: the file is missing, not TOML, or its settings are invalid.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
    else:
        found = discover_config(start or Path.cwd())
        if found.path is None:
            return Config(root=(start or Path.cwd()).resolve())
        path = found.path
    data = _read_toml(path)
    root = path.resolve().parent
    if _has_tripwire_table(data):
        table = data["tool"]["tripwire"]
    elif path.name == "pyproject.toml":
        table = {}
    else:
        table = data
    return from_table(table, root, str(path))


def load_for_path(path: str | os.PathLike, cwd: Path | None = None) -> Config:
    """The config for one checked path (relative paths are taken from `cwd`): the discovered config, or the
    defaults rooted at `cwd` when none applies (what `tripwire check PATH` uses for each PATH).

    Raises:
        FileNotFoundError: `path` does not exist.
        ConfigError: see `load`.
    """
    cwd = Path(cwd or Path.cwd())
    p = Path(path)
    p = p if p.is_absolute() else cwd / p
    if not p.exists():
        raise FileNotFoundError(f"path not found: {path}")
    found = discover_config(p)
    if found.path is None:
        return Config(root=cwd.resolve())
    return load(found.path)


def describe(cfg: Config, found: Discovery | None = None) -> str:
    """The resolved config as TOML-like text, with where it came from (`tripwire check --show-config`)."""
    out = []
    if cfg.source is None:
        out.append("config: none found (no tripwire.toml, and no pyproject.toml with [tool.tripwire], from "
                   f"{found.start if found else cfg.root} upward): defaults apply")
    else:
        table = " [tool.tripwire]" if Path(cfg.source).name == "pyproject.toml" else ""
        out.append(f"config: {cfg.source}{table}")
    for p in (found.skipped if found else []):
        out.append(f"skipped: {p} (no [tool.tripwire] table)")
    out.append(f"root: {cfg.root}")
    out += ["", f"paths = {cfg.paths!r}", f"exclude = {cfg.exclude!r}", f"select = {cfg.select!r}",
            f"ignore = {cfg.ignore!r}", f"test-patterns = {cfg.test_patterns!r}", f"cache-dir = {cfg.cache_dir!r}",
            f"baseline = {cfg.baseline!r}", f"parse-all = {str(cfg.parse_all).lower()}"]
    if cfg.per_file_ignores:
        out += ["", "[per-file-ignores]"] + [f"{k!r} = {v!r}" for k, v in sorted(cfg.per_file_ignores.items())]
    rules = cfg.enabled_rules()
    out += ["", "enabled rules: " + ", ".join(f"{r.name} ({r.severity})" for r in rules)]
    for r in rules:
        if r.opts:
            out += ["", f"[rules.{r.name}]"] + [f"{k} = {v!r}" for k, v in sorted(r.opts.items())]
    return "\n".join(out) + "\n"
