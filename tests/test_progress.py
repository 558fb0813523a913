"""The shared progress reporter: done/total, time left, plain lines vs a TTY bar, a heartbeat while nothing
finishes (fake clock for the numbers; a real thread for the heartbeat, synchronized by an event)."""

from __future__ import annotations

import io
import threading

from tripwire.progress import Progress, fmt_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_durations():
    assert [fmt_duration(x) for x in (0, 4.6, 59, 61, 3599, 3725)] == ["0s", "5s", "59s", "1m01s", "59m59s", "1h02m"]


def test_plain_lines_with_done_total_and_time_left():
    clock, out = Clock(), io.StringIO()
    p = Progress("proofs", 4, stream=out, heartbeat=False, tty=False, interval=5, clock=clock)
    assert p.line() == "proofs: 0/4 (0%), 0s elapsed, time left: estimating"
    clock.t += 10
    p.advance(note="shape-a caught")
    assert out.getvalue().splitlines()[-1] == "proofs: 1/4 (25%), 10s elapsed, ~30s left — shape-a caught"
    clock.t += 1
    p.advance()  # within the interval: not printed
    assert len(out.getvalue().splitlines()) == 1
    clock.t += 9
    p.advance()
    assert out.getvalue().splitlines()[-1].startswith("proofs: 3/4 (75%), 20s elapsed, ~7s left")
    p.close()  # the final line would repeat the last one: not printed again
    assert len(out.getvalue().splitlines()) == 2
    p.close()  # idempotent
    assert len(out.getvalue().splitlines()) == 2
    q = Progress("proofs", 4, stream=out, heartbeat=False, tty=False, interval=5, clock=clock)
    q.update(4)
    clock.t += 1
    q.close(note="done")  # a different final state is printed
    assert out.getvalue().splitlines()[-1] == "proofs: 4/4 (100%), 1s elapsed, ~0s left — done"


def test_expected_duration_estimates_before_the_first_item():
    clock = Clock()
    p = Progress("tests", 10, stream=io.StringIO(), heartbeat=False, expected_s=60, clock=clock)
    clock.t += 15
    assert p.time_left() == 45
    p.update(5)
    assert p.time_left() == 15  # the observed rate wins
    assert Progress("x", None, stream=io.StringIO(), heartbeat=False).time_left() is None


def test_tty_draws_a_bar_and_echo_keeps_it_below_other_output():
    clock, out = Clock(), io.StringIO()
    p = Progress("fuzz", 200, stream=out, heartbeat=False, tty=True, unit="schedules", clock=clock)
    clock.t += 1
    p.update(50)
    assert out.getvalue().endswith("[######------------------] fuzz: 50/200 schedules (25%), 1s elapsed, ~3s left")
    p.echo("a result line")
    assert "\r\x1b[2Ka result line\n\r\x1b[2K[######" in out.getvalue()
    p.close()
    assert out.getvalue().endswith("\n")


def test_heartbeat_prints_while_nothing_finishes():
    printed = threading.Event()

    class Stream(io.StringIO):
        def write(self, s):
            n = super().write(s)
            if "1/3" in s:
                printed.set()
            return n

    out = Stream()
    p = Progress("slow phase", 3, stream=out, tty=False, interval=0.05)
    p.update(1, force=True)
    first = out.getvalue()
    printed.clear()
    assert printed.wait(5), "the heartbeat printed no line while no item finished"
    p.close()
    assert len(out.getvalue()) > len(first)
    assert not p._thread.is_alive()


def test_a_closed_stream_does_not_raise():
    out = io.StringIO()
    p = Progress("x", 2, stream=out, heartbeat=False, tty=False)
    out.close()
    p.update(1, force=True)
    p.close()
