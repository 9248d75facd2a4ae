"""Errors shared by the packages, without pydantic (the sidecar imports them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A policy file that cannot be used; the message says why and where."""
