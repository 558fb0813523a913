"""`serve --gil-switch-ms` (issue 16): validated like every option, Python's 5 ms by default."""

from __future__ import annotations

import pytest

from tripwire.engine.__main__ import DEFAULT_GIL_SWITCH_MS, build_parser


def test_default_and_valid_values():
    assert build_parser().parse_args(["serve"]).gil_switch_ms == DEFAULT_GIL_SWITCH_MS == 5.0
    assert build_parser().parse_args(["serve", "--gil-switch-ms", "0.5"]).gil_switch_ms == 0.5


@pytest.mark.parametrize("bad", ["0", "-1", "1000", "fast"])
def test_bad_values_are_usage_errors_that_say_why(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--gil-switch-ms", bad])
    assert exc.value.code == 2
    assert "--gil-switch-ms" in capsys.readouterr().err
