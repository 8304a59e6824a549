"""The Textual front end (not built yet: see the issues)."""
