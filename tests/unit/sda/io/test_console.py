"""sda.io.console: names from a user's folders printed on any terminal, on one line."""

from __future__ import annotations

import io
import os
import sys

from sda.io.console import printable, printable_console


def test_accents_other_scripts_and_spaces_print_as_they_are():
    assert printable("café ü名 a b.png") == "café ü名 a b.png"


def test_control_characters_are_escaped_so_a_name_stays_on_one_line():
    out = printable("a\nb\tc\rd\x1be")
    assert out == "a\\nb\\tc\\rd\\x1be" and "\n" not in out and "\t" not in out


def test_a_file_name_that_is_not_utf8_shows_its_bytes():
    name = os.fsdecode(b"caf\xe9-\xff.png")  # as os.listdir gives it under a UTF-8 locale
    assert printable(name) == "caf\\xe9-\\xff.png"
    assert printable(name).encode("ascii")  # printable on an ASCII terminal too


def test_a_lone_surrogate_that_is_no_file_name_is_escaped_not_an_error():
    assert printable("a\ud800b") == "a\\ud800b"


def test_the_console_writes_what_its_encoding_cannot_hold_as_escapes(monkeypatch):
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    latin_err = io.TextIOWrapper(io.BytesIO(), encoding="latin-1", errors="strict")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    monkeypatch.setattr(sys, "stderr", latin_err)
    printable_console()
    print("café 名")  # would raise UnicodeEncodeError before
    sys.stderr.write("名\n")
    ascii_out.flush()
    assert raw.getvalue() == b"caf\\xe9 \\u540d\n"
    assert ascii_out.errors == latin_err.errors == "backslashreplace"


def test_a_stream_that_cannot_be_reconfigured_is_left_alone(monkeypatch):
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stdout", plain)
    printable_console()
    print("ok")
    assert plain.getvalue() == "ok\n"
