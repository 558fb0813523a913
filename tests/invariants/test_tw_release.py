"""The release convention (CONTRIBUTING.md): one version in pyproject and the package, a changelog section
for it, tags `vX.Y.Z` that pre-commit users pin."""

from __future__ import annotations

import re
import tomllib

from tw_helpers import REPO

from tripwire import invariants


def test_versions_agree_and_the_changelog_has_them():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version == invariants.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    log = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in log
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", log, re.M)


def test_hooks_file_documents_pinning_a_tag():
    hooks = (REPO / ".pre-commit-hooks.yaml").read_text()
    assert "rev: vX.Y.Z" in hooks
