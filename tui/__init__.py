"""The Textual front end, ``undebug tui``: one screen over a live guest.

It reads the guest only through :mod:`undebug.api` (blocking calls run in workers, their
results come back as :mod:`tui.messages`), and shows guest text escaped, never as markup.
"""
