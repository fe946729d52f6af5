"""Where progress and messages go: rich's bars in a terminal, plain whole lines elsewhere.

In a terminal, :func:`stderr_console` is a rich console as usual (live progress bars,
styles).  When standard error is not a terminal — piped, redirected to a file, under CI
or ``nohup`` — it is a rich console that is told so: no live display, no ANSI escape
codes (``FORCE_COLOR`` and ``TTY_COMPATIBLE`` notwithstanding) and no wrapping, so each
message is one line however long.  Code showing progress asks :func:`live` whether to
draw bars at all, and prints one line per event otherwise.

rich is imported when a console is made, not with this module.
"""

from __future__ import annotations

import sys
from typing import IO, Any

__all__ = ["is_tty", "live", "stderr_console"]


def is_tty(stream: IO | None) -> bool:
    """Whether ``stream`` is an open terminal (``False`` for pipes, files, closed or odd streams)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def stderr_console() -> Any:
    """A rich ``Console`` on standard error: the usual one in a terminal; otherwise plain text
    (``force_terminal=False``, no colour, no highlighting, lines never wrapped)."""
    from rich.console import Console

    if is_tty(sys.stderr):
        return Console(stderr=True, highlight=False, soft_wrap=True)
    return Console(stderr=True, highlight=False, soft_wrap=True, force_terminal=False, no_color=True,
                   color_system=None, emoji=False)


def live(console: Any) -> bool:
    """Whether ``console`` (a rich ``Console``) can show live progress bars: it writes to a
    terminal (as it was told or found) or a Jupyter notebook."""
    return bool(getattr(console, "is_terminal", False) or getattr(console, "is_jupyter", False))
