"""The TUI's screens: one guest (:mod:`tui.screens.guest`), the list of guests, help."""
