"""HTTP byte ranges (RFC 9110 §14) for artifact downloads: one range per request."""

from __future__ import annotations

from app.problems import Problem


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` asked for, or None for the whole file.

    A malformed header or several ranges are ignored (the whole file is sent, as RFC 9110 allows);
    a range outside the file raises 416.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if (
        not dash
        or not (first.isdigit() or last.isdigit())
        or (first and not first.isdigit())
        or (last and not last.isdigit())
    ):
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    if last and int(last) < start:  # an invalid range-spec: ignored
        return None
    if start >= size:
        raise _unsatisfiable(size)
    end = min(int(last), size - 1) if last else size - 1
    return start, end


def _unsatisfiable(size: int) -> Problem:
    return Problem(
        "range-not-satisfiable",
        f"the file has {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
