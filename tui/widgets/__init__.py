"""The panes of the TUI. Each takes typed data from its screen and shows guest text
through :func:`tui.widgets.text.guest` (escaped, never markup)."""
