"""How the user-facing commands end: exit 0 on success, 1 when the work failed (a job failed, the server
broke), 2 for bad input (files, options, a refused request), 130 when interrupted; always with one line
on stderr, never a traceback for something the user can fix."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """Stop the command with this one-line message and exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def guarded(name: str, command: Command, translate: Callable[[Exception], CommandError | None]) -> Command:
    """``command`` with its errors turned into ``specprune NAME: error: ...`` and an exit status;
    ``translate`` maps the exceptions the command knows to CommandErrors (None: not a known one)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except KeyboardInterrupt:
            print(f"\nspecprune {name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        except Exception as exc:
            known = exc if isinstance(exc, CommandError) else translate(exc)
            if known is None:
                raise
            print(f"specprune {name}: error: {one_line(str(known))}", file=sys.stderr)
            return known.exit_code

    return run


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` on a single line, shortened to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
