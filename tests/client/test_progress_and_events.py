"""Progress display (a redrawn bar on a terminal, plain lines otherwise) and the event-stream reader."""

from __future__ import annotations

import io

from client.progress import ProgressDisplay
from client.sse import Event, iter_events


def test_a_terminal_gets_one_redrawn_bar_line() -> None:
    out = io.StringIO()
    with ProgressDisplay(out, label="job", tty=True) as display:
        display.update("statistics", 0.0)
        display.update("statistics", 0.5)
        display.update("selection", 1.0)
    text = out.getvalue()
    frames = text.split("\r\x1b[K")[1:]
    assert frames[0].startswith("job statistics") and "0.0%" in frames[0]
    assert frames[-1].startswith("job selection") and "[" + "#" * 28 + "]" in frames[-1]
    assert "100.0%" in frames[-1] and text.endswith("\n") and text.count("\n") == 1


def test_a_log_gets_plain_lines_on_stage_changes_and_completion() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=False)
    for stage, fraction in [
        ("loading", 0.0),
        ("loading", 0.3),
        ("loading", 1.0),
        ("loading", 1.0),
        ("export", 0.5),
    ]:
        display.update(stage, fraction)
    display.close()
    assert out.getvalue().splitlines() == ["loading 0%", "loading 100%", "export 50%"]
    assert "\r" not in out.getvalue()


def test_server_sent_events_are_parsed() -> None:
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "id: 1",
        "event: status",
        'data: {"a": 1}',
        "",
        "event: progress",
        "data:line one",
        "data: line two",
        "",
    ]
    assert list(iter_events(lines)) == [
        Event("status", '{"a": 1}', "1"),
        Event("progress", "line one\nline two", "1"),
    ]
