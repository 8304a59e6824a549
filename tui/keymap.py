"""Rebinding the TUI's keys: a TOML file maps a binding's id to the keys it takes, as
Textual's keymaps do (``App.set_keymap``)::

    # $XDG_CONFIG_HOME/undebug/tui-keys.toml (default ~/.config/undebug/tui-keys.toml)
    [keys]
    stop = "S"            # shift+s stops the guest; s then does nothing
    continue = "f5,c"     # two keys

The ids are those the help screen (?) lists. A file that does not parse is reported and
the default keys stay.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

__all__ = ["keymap_path", "load_keymap"]


def keymap_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "undebug" / "tui-keys.toml"


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], str | None]:
    """The id -> keys map of ``path`` (default :func:`keymap_path`), and what was wrong
    with the file (None: nothing, or no file)."""
    path = path or keymap_path()
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return {}, None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return {}, f"{path}: {exc} (the default keys are used)"
    keys = doc.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in keys.items()):
        return {}, f"{path}: [keys] must map binding ids to strings such as \"s\" or \"f5,c\""
    return dict(keys), None
