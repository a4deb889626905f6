"""Text for a terminal of any encoding: names from a user's folders (any bytes, any Unicode) printed
without a codec error and without breaking a line or a table."""

from __future__ import annotations

import os
import sys

__all__ = ["printable", "printable_console"]


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: a file name read under any locale shown as its UTF-8 bytes
    say (bytes that are not UTF-8 as ``\\xe9``), control characters (a newline, a tab) and other
    unprintable characters as backslash escapes; the rest, accents and other scripts included, as it is."""
    try:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:  # not a file name of this locale: already text
        pass
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


def printable_console() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` write what their encoding cannot hold as backslash escapes
    instead of raising (a C / ASCII locale, a Latin-1 terminal, a file name that is not UTF-8)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
