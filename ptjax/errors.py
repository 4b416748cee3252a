"""Errors that name what the user must change: a leaf module, imported by every layer."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is expected."""
