"""Experiments built from the project's own command lines (see `miniature`)."""
