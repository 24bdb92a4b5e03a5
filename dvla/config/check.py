"""The one way a config section reports a bad field."""

from __future__ import annotations


def check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config field '{name}': {msg}")
