# Two entry points a fresh machine needs: `make report` (the main job) and `make test`.
PY ?= python3.11
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup report test test-fast lint fuzz bench mutation field field-run clean

$(VPY):
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=python3 ...'" >&2; exit 2; }
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	$(VPY) -m tripwire.sanitizer install  # TRIPWIRE_MLX_SANITIZER=1 then enables the MLX thread sanitizer in any process
	-$(VPY) -m tripwire.tools.run_tests --warm  # best effort: pytest's rewrite cache, so test workers need not rewrite every module
	@touch $(STAMP)

setup: $(STAMP)

report: $(STAMP)
	$(VPY) -m tripwire.tools.report $(if $(BASE),--base $(BASE))

# Generic mutation testing of all of engine/ (mutmut, group by group, each bounded; not in CI): kill rate +
# survivors by file in reports/mutation.md. GROUPS="cache server" runs some groups.
mutation: $(STAMP)
	$(VPY) -m pip install -q -e '.[mutation]'
	$(VPY) -m tripwire.tools.mutation $(if $(GROUPS),--groups $(GROUPS))

# The field corpus (needs the package registry; not part of `make test`): download the pinned MLX servers,
# then measure the checker's precision with defaults against tools/field/verdicts.jsonl.
field: $(STAMP)
	$(VPY) -m tripwire.tools.field fetch
	$(VPY) -m tripwire.tools.field check
# Real MLX servers from the package registry (mlx-lm, vllm-mlx, rapid-mlx, mlx-openai-server) under the MLX thread
# sanitizer and load; rows land in reports/field_run.json and the report's "field" section. Not in CI (it installs
# other packages). Bound: <= 10 min on 2 cores once the venvs are cached in ~/.cache/tripwire/field-venvs (the
# first run also installs them: ~2-5 min per server, each install capped at 7 min).
field-run: $(STAMP)
	$(VPY) -m tripwire.tools.field_run all --seconds 30 --exit-zero

test: $(STAMP)
	$(VPY) -m tripwire.tools.run_tests

# ruff with the small rule set chosen in pyproject.toml ([tool.ruff.lint]); CI runs it before the tests.
lint: $(STAMP)
	$(VPY) -m ruff check .

test-fast: $(STAMP)
	$(VPY) -m pytest -q -x

clean:
	rm -rf $(VENV) reports .fuzz .tripwire_cache .coverage .coverage.*
