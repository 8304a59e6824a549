"""Guest-controlled text never reaches a terminal raw."""

from undebug.text import escape


def test_escape_sequences_become_visible_text() -> None:
    hostile = "evil\x1b]0;owned\x07"
    assert escape(hostile) == "evil\\x1b]0;owned\\x07"


def test_every_c0_and_c1_control_is_escaped_but_tab_is_kept() -> None:
    controls = "".join(chr(c) for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F,
                                         *range(0x80, 0xA0)])
    out = escape(controls + "\t")
    assert out.endswith("\t")
    assert not any(ch in out[:-1] for ch in controls)


def test_invalid_utf8_bytes_are_shown_as_hex() -> None:
    assert escape(b"ok\xff\x1b[2J") == "ok\\xff\\x1b[2J"


def test_bidi_overrides_are_escaped() -> None:
    assert escape("a\u202eb") == "a\\u202eb"


def test_newlines_kept_only_when_asked() -> None:
    assert escape("a\nb") == "a\\nb"
    assert escape("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


def test_a_backslash_is_doubled_so_the_guest_cannot_forge_an_escape() -> None:
    assert escape("a\\x1bb") == "a\\\\x1bb"
    assert escape(b"a\\x1b\x1b") == "a\\\\x1b\\x1b"


def test_line_separators_and_bidi_marks_are_escaped() -> None:
    hostile = "a\u2028b\u2029c\u200fd\u061ce\ufefff\u2066g"
    assert escape(hostile) == "a\\u2028b\\u2029c\\u200fd\\u061ce\\ufefff\\u2066g"


def test_plain_unicode_text_is_kept() -> None:
    assert escape("naïve — 東京 ✓") == "naïve — 東京 ✓"
