"""tools.field_run's pure parts (the runs themselves install servers and are `make field-run`, not tests)."""

from __future__ import annotations

import subprocess
import sys

from tripwire.tools.field_report import field_html, field_markdown, summarize_row
from tripwire.tools.field_run.driver import LoadStats, zombie_windows
from tripwire.tools.field_run.run import findings, parse_dump
from tripwire.tools.field_run.servers import SERVERS

DUMP = '''Thread 0x00007f0000000001 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 327 in wait
  File "/usr/lib/python3.11/queue.py", line 171 in get
  File "/srv/server.py", line 579 in _next_request

Current thread 0x00007f0000000002 (most recent call first):
  File "/usr/lib/python3.11/selectors.py", line 468 in select
  File "/usr/lib/python3.11/asyncio/base_events.py", line 1884 in _run_once
'''


def test_parse_dump_reads_every_thread_and_its_state():
    threads = parse_dump(DUMP)
    assert [t["state"] for t in threads] == ["waiting on a lock/condition", "idle (selector/queue)"]
    assert threads[0]["frames"][2] == "/srv/server.py:579 in _next_request"


def test_zombie_window_is_health_ok_without_completions():
    st = LoadStats()
    st.health = [(float(t), True) for t in range(0, 31)]
    st.completion_times = [1.0, 2.0, 5.0]
    assert zombie_windows(st, 0.0, 30.0, min_s=10.0) == [{"from_s": 5.0, "to_s": 30.0}]
    st.completion_times = [1.0 + 3 * i for i in range(10)]
    assert zombie_windows(st, 0.0, 30.0, min_s=10.0) == []
    st.health = [(float(t), t < 10) for t in range(0, 31)]  # health down is not a zombie
    st.completion_times = [1.0]
    assert zombie_windows(st, 0.0, 30.0, min_s=10.0) == []


ROW = {"server": "x", "version": "1.0", "status": "ran",
       "load": {"status": {"200": 10, "503": 4, "500": 1}, "requests": 15, "completed_200": 10, "hangs": [],
                "zombie_windows": [], "in_flight_at_end": []},
       "after_load": {"zombie": False}, "threads_at_end": [],
       "exit": {"ended_by": "SIGINT", "exit_status": 66, "clean": True},
       "exit_control": {"runs": 3, "exit_statuses": [0, -6, 0], "aborted": 1},
       "sanitizer": {"by_kind": {"thread-exit-without-cleanup": 1},
                     "violations": [{"kind": "thread-exit-without-cleanup", "message": "m", "stack": ["a:1 in f"],
                                     "other_stack": ["b:2 in g"]}]}}


def test_findings_name_violations_non_503_errors_and_aborts():
    f = findings(ROW)
    assert "thread-exit-without-cleanup x1" in f and "1 HTTP 5xx other than 503" in f
    assert any("aborted at exit in 1/3" in x for x in f)
    failed = {"server": "y", "version": "2", "status": "start-failed", "error": "boom: No module named 'x'"}
    assert findings(failed) == ["start-failed: boom: No module named 'x'"]


def test_report_section_has_a_row_per_server_including_failures():
    failed = {"server": "y", "version": "2", "status": "install-failed",
              "error": "pip install torch==9 failed (exit 1):\nERROR: No matching distribution found for torch==9"}
    field = {"rows": [ROW, failed]}
    md = field_markdown(field)
    assert "| x | 1.0 | ran | thread-exit-without-cleanup ×1 |" in md and "| y | 2 | install-failed |" in md
    assert "| y | 2 | install-failed | — | — | — | — | — | ERROR: No matching distribution found for torch==9 |" in md
    assert "b:2 in g" in md
    assert "install-failed" in field_html(field) and summarize_row(ROW)["http_5xx"] == {"503": 4, "500": 1}
    assert field_markdown(None) == "" and field_html(None) == ""


def test_cli_lists_servers_and_rejects_unknown_ones():
    ok = subprocess.run([sys.executable, "-m", "tripwire.tools.field_run", "--list"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and all(name in ok.stdout for name in SERVERS)
    bad = subprocess.run([sys.executable, "-m", "tripwire.tools.field_run", "no-such-server"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown server" in bad.stderr
