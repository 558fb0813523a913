"""The checking pipeline: discover -> read + hash -> (cache | prefilter -> parse once -> rules) -> project rules
-> per-file ignores -> suppressions -> baseline."""

from __future__ import annotations

import ast
import hashlib
import io
import os
import tokenize
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .baseline import assign_fingerprints
from .config import Config
from .core import Evidence, FileContext, Finding, ProjectSink
from .suppress import Suppression, parse_suppressions

META_PARSE = ("parse-error", "TW001")
META_UNUSED = ("unused-suppression", "TW002")
META_INVALID = ("invalid-suppression", "TW003")
META_INTERNAL = ("internal-error", "TW004")
_SUPP_MARK = b"tripwire:"


@dataclass
class FileResult:
    digest: str
    parsed: bool = False
    findings: list[Finding] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    summaries: dict[str, Any] = field(default_factory=dict)
    suppressions: list[Suppression] = field(default_factory=list)


@dataclass
class CheckResult:
    root: Path
    files: list[str]
    rules: list
    findings: list[Finding]
    evidence: list[Evidence]
    parsed_files: int = 0
    cache_hits: int = 0
    lines: int = 0

    @property
    def active(self) -> list[Finding]:
        return [f for f in self.findings if f.active]

    @property
    def internal_errors(self) -> list[Finding]:
        return [f for f in self.findings if f.rule == "internal-error"]

    def exit_code(self) -> int:
        if self.internal_errors:
            return 2
        return 1 if self.active else 0


# -- discovery ------------------------------------------------------------------------------------------
def rel_of(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def discover(paths: Iterable[str], cfg: Config, cwd: Path | None = None) -> list[tuple[str, Path]]:
    """(relpath, abspath) of every .py file under `paths` not excluded by the config, sorted."""
    cwd = cwd or Path.cwd()
    root = cfg.root
    seen: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if not p.is_absolute():
            p = (cwd / p) if (cwd / p).exists() or not (root / p).exists() else (root / p)
        p = Path(os.path.abspath(p))
        if p.is_file():
            rel = rel_of(p, root)
            if not (_under(p, root) and cfg.is_excluded(rel)):
                seen[rel] = p
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"path not found: {raw}")
        # Exclusions apply below the given directory (and to root-relative globs when it is inside the
        # root): `tripwire check .venv/lib/.../mlx_lm` checks mlx_lm even though `.venv` is excluded.
        inside = _under(p, root)
        stack = [(p, _gitignores_above(p, root) if inside else ())]
        while stack:
            d, ignores = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            ignores = ignores + _gitignore_in(d)
            for e in entries:
                ep = Path(e.path)
                rel = rel_of(ep, root)
                below = ep.relative_to(p).as_posix()
                if cfg.is_excluded(below) or (inside and rel != below and _glob_excluded(cfg, rel)):
                    continue
                is_dir = e.is_dir(follow_symlinks=False)
                if ignores and _gitignored(ignores, ep, is_dir):
                    continue
                if is_dir:
                    stack.append((ep, ignores))
                elif e.name.endswith(".py") and e.is_file():
                    seen[rel] = ep
    return sorted(seen.items())


# .gitignore files: (directory they sit in, compiled spec). Patterns are relative to that directory.
_Ignores = tuple[tuple[Path, Any], ...]


def _gitignore_in(d: Path) -> _Ignores:
    f = d / ".gitignore"
    try:
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    import pathspec

    return ((d, pathspec.GitIgnoreSpec.from_lines(lines)),)


def _gitignores_above(p: Path, root: Path) -> _Ignores:
    """The .gitignore files from the root down to (excluding) `p`, minus any that ignore `p` itself: a
    directory named explicitly is checked (like `exclude`, ignores apply below it)."""
    out: _Ignores = ()
    if p == root:
        return out
    for d in [root, *[root / Path(*p.relative_to(root).parts[:i]) for i in range(1, len(p.relative_to(root).parts))]]:
        for base, spec in _gitignore_in(d):
            if not spec.match_file(p.relative_to(base).as_posix() + "/"):
                out += ((base, spec),)
    return out


def _gitignored(ignores: _Ignores, path: Path, is_dir: bool) -> bool:
    for base, spec in ignores:
        rel = path.relative_to(base).as_posix()
        if spec.match_file(rel + "/" if is_dir else rel):
            return True
    return False


def _under(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def _glob_excluded(cfg: Config, rel: str) -> bool:
    """Only the root-relative path globs (patterns with a '/'), not bare component names."""
    import fnmatch

    return any("/" in pat and fnmatch.fnmatchcase(rel, pat) for pat in cfg.exclude)


# -- per-file analysis ------------------------------------------------------------------------------------
def _meta(kind: tuple[str, str], path: str, line: int, col: int, message: str, severity: str = "error") -> Finding:
    return Finding(kind[0], kind[1], severity, path, max(1, line), max(1, col), message)


def decode_source(data: bytes) -> str:
    enc, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    text = data.decode(enc)
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def analyze(rel: str, data: bytes, digest: str, is_test: bool, file_rules: list, project_rules: list,
            parse_all: bool) -> FileResult:
    res = FileResult(digest)
    active = [r for r in file_rules if _applies(r, rel, data, is_test)]
    proj = [r for r in project_rules if _applies(r, rel, data, is_test)]
    has_supp = _SUPP_MARK in data
    if not active and not proj and not parse_all and not has_supp:
        # No rule can match, so the file is not parsed; the cheap checks still run: NUL bytes and the
        # declared/default encoding. (Syntax errors here are only found with `parse-all = true`.)
        if b"\x00" in data:
            res.findings.append(_meta(META_PARSE, rel, data[:data.index(b"\x00")].count(b"\n") + 1, 1,
                                      "source contains NUL bytes"))
            return res
        try:
            decode_source(data)
        except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
            res.findings.append(_meta(META_PARSE, rel, 1, 1, f"cannot decode source: {exc}"))
        return res
    try:
        text = decode_source(data)
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        res.findings.append(_meta(META_PARSE, rel, 1, 1, f"cannot decode source: {exc}"))
        return res
    try:
        tree = ast.parse(text, filename=rel)
    except SyntaxError as exc:
        res.findings.append(_meta(META_PARSE, rel, exc.lineno or 1, exc.offset or 1,
                                  f"syntax error: {exc.msg}"))
        return res
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        res.findings.append(_meta(META_PARSE, rel, 1, 1, f"cannot parse: {type(exc).__name__}: {exc}"))
        return res
    res.parsed = True
    ctx = FileContext(rel, data, text, tree, is_test)
    for rule in active:
        ctx.rule = rule
        try:
            rule.check(ctx)
        except Exception as exc:  # a rule bug must never crash the run: report it loudly instead
            res.findings.append(_meta(META_INTERNAL, rel, 1, 1, f"rule {rule.name} crashed: "
                                      f"{type(exc).__name__}: {exc} | {_where(exc)}"))
    for rule in proj:
        ctx.rule = rule
        try:
            res.summaries[rule.name] = rule.summarize(ctx)
        except Exception as exc:
            res.findings.append(_meta(META_INTERNAL, rel, 1, 1, f"rule {rule.name} crashed: "
                                      f"{type(exc).__name__}: {exc} | {_where(exc)}"))
    res.findings.extend(ctx.findings)
    res.evidence.extend(ctx.evidence)
    if has_supp:
        res.suppressions = parse_suppressions(text)
    _fingerprint(res.findings, text.splitlines())
    return res


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"


def _applies(rule, rel: str, data: bytes, is_test: bool) -> bool:
    if rule.scope == "tests" and not is_test:
        return False
    return rule.matches_file(rel, data)


_fingerprint = assign_fingerprints


def _lines_of(data: bytes) -> list[str]:
    try:
        return decode_source(data).splitlines()
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return []


# -- the whole run --------------------------------------------------------------------------------------
def run(cfg: Config, paths: list[str] | None = None, *, use_cache: bool = True, jobs: int | None = None,
        baseline: dict | None = None, cwd: Path | None = None) -> CheckResult:
    from .cache import Cache

    rules = cfg.enabled_rules()
    names = {r.name for r in rules}
    file_rules = [r for r in rules if not r.project and not r.meta]
    project_rules = [r for r in rules if r.project and not r.meta]
    files = discover(paths if paths else cfg.paths, cfg, cwd=cwd)
    cache = Cache(cfg, rules) if use_cache else None
    results: dict[str, FileResult] = {}
    datas: dict[str, bytes] = {}
    todo: list[tuple[str, bytes, str, bool]] = []
    hits = 0
    total_lines = 0
    for rel, abspath in files:
        try:
            with open(abspath, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            results[rel] = FileResult("", findings=[_meta(META_PARSE, rel, 1, 1, f"cannot read: {exc}")])
            continue
        total_lines += data.count(b"\n")
        datas[rel] = data
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        cached = cache.get(rel, digest) if cache else None
        if cached is not None:
            results[rel] = cached
            hits += 1
        else:
            todo.append((rel, data, digest, cfg.is_test(rel)))
    for rel, res in _analyze_all(todo, file_rules, project_rules, cfg.parse_all, jobs):
        results[rel] = res
        if cache:
            cache.put(rel, res)
    if cache:
        cache.save()

    findings: list[Finding] = []
    evidence: list[Evidence] = []
    for rel, res in results.items():
        findings.extend(res.findings)
        evidence.extend(res.evidence)
    # project rules decide over the index of per-file summaries
    for rule in project_rules:
        sink = ProjectSink(rule)
        index = {rel: res.summaries[rule.name] for rel, res in results.items() if rule.name in res.summaries}
        try:
            rule.decide(index, sink)
        except Exception as exc:
            findings.append(_meta(META_INTERNAL, ".", 1, 1, f"rule {rule.name} crashed in decide: "
                                  f"{type(exc).__name__}: {exc} | {_where(exc)}"))
        by_path: dict[str, list[Finding]] = {}
        for f in sink.findings:
            by_path.setdefault(f.path, []).append(f)
        for path, fs in by_path.items():
            _fingerprint(fs, _lines_of(datas.get(path, b"")))
        findings.extend(sink.findings)
        evidence.extend(sink.evidence)

    findings = _apply_ignores_and_suppressions(findings, results, cfg, names)
    # Meta findings (parse errors before parsing, unused/invalid suppressions) are made after the per-file
    # pass: fingerprint them too, in line order, or a baseline would accept them all under one empty key.
    late: dict[str, list[Finding]] = {}
    for f in sorted((f for f in findings if not f.fingerprint), key=lambda f: (f.line, f.col, f.code)):
        late.setdefault(f.path, []).append(f)
    for path, fs in late.items():
        _fingerprint(fs, _lines_of(datas.get(path, b"")))
    if baseline:
        known = baseline.get("fingerprints", {})
        for f in findings:
            if not f.suppressed and f.fingerprint in known:
                f.baselined = True
    findings.sort(key=lambda f: (f.path, f.line, f.col, f.code))
    evidence.sort(key=lambda e: (e.rule, e.path, e.line))
    parsed = sum(1 for r in results.values() if r.parsed)
    return CheckResult(cfg.root, [rel for rel, _ in files], rules, findings, evidence, parsed, hits, total_lines)


def _apply_ignores_and_suppressions(findings: list[Finding], results: dict[str, FileResult], cfg: Config,
                                    enabled: set[str]) -> list[Finding]:
    out: list[Finding] = []
    ignored_cache: dict[str, set[str]] = {}
    supps: dict[str, list[Suppression]] = {rel: [Suppression(s.line, list(s.rules), s.reason, s.comment_only,
                                                             s.error) for s in r.suppressions]
                                           for rel, r in results.items() if r.suppressions}
    for f in findings:
        ign = ignored_cache.get(f.path)
        if ign is None:
            ign = ignored_cache[f.path] = cfg.ignored_for(f.path)
        if (f.rule in ign or "ALL" in ign) and f.rule not in ("parse-error", "internal-error"):
            continue
        if f.rule not in ("parse-error", "internal-error"):
            for s in supps.get(f.path, ()):
                if s.error is None and f.rule in s.rules and s.covers(f.line):
                    f.suppressed = True
                    f.justification = s.reason
                    s.used.add(f.rule)
                    break
        out.append(f)
    for rel, ss in supps.items():
        ign = cfg.ignored_for(rel)
        for s in ss:
            if s.error is not None:
                if "invalid-suppression" in enabled and "invalid-suppression" not in ign:
                    out.append(_meta(META_INVALID, rel, s.line, 1, s.error))
                continue
            for name in s.rules:
                if name in s.used or name not in enabled or name in ign or "ALL" in ign:
                    continue
                if "unused-suppression" in enabled and "unused-suppression" not in ign:
                    out.append(_meta(META_UNUSED, rel, s.line, 1,
                                     f"unused suppression: no {name} finding on this line or the next",
                                     severity="warning"))
    return out


def _analyze_all(todo, file_rules, project_rules, parse_all, jobs):
    n = len(todo)
    if n == 0:
        return []
    total = sum(len(t[1]) for t in todo)
    workers = _pick_jobs(jobs, n, total)
    if workers <= 1:
        return [(rel, analyze(rel, data, digest, is_test, file_rules, project_rules, parse_all))
                for rel, data, digest, is_test in todo]
    return _parallel(todo, file_rules, project_rules, parse_all, workers)


# Below this much source (to read, prefilter and maybe parse), forking workers and pickling results costs
# more than it saves. Measured on 2 cores over ~3 MB (mlx_lm + asyncio): 0.35 s serial vs 0.20 s with 2 jobs.
PARALLEL_MIN_BYTES = 1_500_000


def _pick_jobs(jobs: int | None, n: int, total_bytes: int) -> int:
    if jobs is not None:
        return max(1, min(jobs, n))
    if total_bytes < PARALLEL_MIN_BYTES or n < 8:
        return 1
    return max(1, min(os.cpu_count() or 1, 8, n))


_WORKER_STATE: tuple | None = None


def _work_chunk(chunk):
    file_rules, project_rules, parse_all = _WORKER_STATE  # inherited through fork
    return [(rel, analyze(rel, data, digest, is_test, file_rules, project_rules, parse_all))
            for rel, data, digest, is_test in chunk]


def _parallel(todo, file_rules, project_rules, parse_all, workers):
    import concurrent.futures
    import multiprocessing

    global _WORKER_STATE
    try:
        mp = multiprocessing.get_context("fork")
    except ValueError:
        return [(rel, analyze(rel, d, g, t, file_rules, project_rules, parse_all)) for rel, d, g, t in todo]
    _WORKER_STATE = (file_rules, project_rules, parse_all)
    # balance by size: deal files round-robin from largest to smallest
    chunks: list[list] = [[] for _ in range(workers * 2)]
    for i, item in enumerate(sorted(todo, key=lambda t: -len(t[1]))):
        chunks[i % len(chunks)].append(item)
    out = []
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=mp) as ex:
        for part in ex.map(_work_chunk, [c for c in chunks if c]):
            out.extend(part)
    return out
