"""Fixtures shared by the report tests."""

from __future__ import annotations

import pytest

from report_helpers import make_report_data


@pytest.fixture
def fake_report_data() -> dict:
    return make_report_data()
