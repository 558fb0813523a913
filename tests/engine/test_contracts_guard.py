"""MLX entry guard contracts: enablement, re-entry depth, owner record and counters."""

from __future__ import annotations

import threading

import pytest

from tripwire.engine import ConcurrentMLXEntry, MLXEntryGuard


def _enter_from_other_thread(guard: MLXEntryGuard, request_id: str) -> BaseException | None:
    """Enter and leave the guard on a fresh thread; return what it raised (None if it got in)."""
    out: list[BaseException | None] = []

    def run():
        try:
            with guard.enter(request_id):
                pass
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.append(exc)
        else:
            out.append(None)

    t = threading.Thread(target=run, name=f"other-{request_id}")
    t.start()
    t.join(5)
    assert not t.is_alive() and len(out) == 1
    return out[0]


@pytest.mark.parametrize("value, enabled", [("", False), ("0", False), ("false", False), ("no", False),
                                            ("1", True), ("yes", True), ("true", True)])
def test_tripwire_debug_values_decide_the_default(monkeypatch, value, enabled):
    monkeypatch.setenv("TRIPWIRE_DEBUG", value)
    assert MLXEntryGuard().enabled is enabled
    # An explicit argument always wins over the environment.
    assert MLXEntryGuard(enabled=not enabled).enabled is (not enabled)


def test_unset_tripwire_debug_means_disabled(monkeypatch):
    monkeypatch.delenv("TRIPWIRE_DEBUG", raising=False)
    assert MLXEntryGuard().enabled is False


def test_fresh_guard_has_no_owner_and_zero_counters():
    g = MLXEntryGuard(enabled=True)
    assert g.owner is None and g.entries == 0 and g.trips == 0


def test_owner_names_the_thread_and_first_request_and_survives_until_the_outermost_exit():
    g = MLXEntryGuard(enabled=True)
    me = threading.current_thread().name
    with g.enter("outer"):
        assert g.owner == {"thread": me, "request_id": "outer"}
        with g.enter("inner"):
            # Re-entry keeps the first owner record; it does not overwrite the request id.
            assert g.owner == {"thread": me, "request_id": "outer"}
            with g.enter(None):
                pass
        # Back at depth 1: still owned, so another thread is still refused.
        assert g.owner == {"thread": me, "request_id": "outer"}
        exc = _enter_from_other_thread(g, "intruder")
        assert isinstance(exc, ConcurrentMLXEntry)
        assert "'other-intruder'" in str(exc) and "'outer'" in str(exc) and "'intruder'" in str(exc)
    assert g.owner is None
    assert g.entries == 3 and g.trips == 1
    # Owner cleared at depth 0: another thread gets in and becomes (then stops being) the owner.
    assert _enter_from_other_thread(g, "next") is None
    assert g.owner is None and g.entries == 4 and g.trips == 1


def test_owner_is_cleared_when_the_body_raises():
    g = MLXEntryGuard(enabled=True)
    with pytest.raises(KeyError):
        with g.enter("a"):
            with g.enter("a"):
                raise KeyError("x")
    assert g.owner is None
    assert _enter_from_other_thread(g, "b") is None


def test_each_refused_entry_counts_a_trip_and_not_an_entry():
    g = MLXEntryGuard(enabled=True)
    with g.enter("holder"):
        for i in range(3):
            assert isinstance(_enter_from_other_thread(g, f"x{i}"), ConcurrentMLXEntry)
        assert g.owner["request_id"] == "holder"
    assert g.trips == 3 and g.entries == 1


def test_disabled_guard_records_nothing_even_across_threads():
    g = MLXEntryGuard(enabled=False)
    with g.enter("a"):
        assert g.owner is None
        assert _enter_from_other_thread(g, "b") is None
    assert g.entries == 0 and g.trips == 0
