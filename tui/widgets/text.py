"""Guest text on screen: escaped (undebug.text) and wrapped in a Rich ``Text``, which is
never parsed as markup, so a thread named ``[red]`` or ``\\x1b]0;owned\\x07`` shows as is."""

from __future__ import annotations

from rich.text import Text

from undebug.text import escape


def guest(value: str | None, style: str = "", default: str = "-") -> Text:
    """``value`` from the guest as a Text: its control characters and escapes visible."""
    if value is None:
        return Text(default, style="dim")
    return Text(escape(str.__str__(value)), style=style)
