"""Name -> object lookup shared by every pluggable part (SDEs, networks, samplers, data sets)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """Return ``table[name]`` or raise a ValueError that lists the valid names and a close match."""
    if name in table:
        return table[name]
    valid = sorted(table)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown {what} '{name}'{hint}; valid names: {', '.join(valid)}")
