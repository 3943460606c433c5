"""Numeric command-line options, checked where they are parsed: a NaN guidance scale would draw
black images and an infinite noise level would report ``PSNR nan dB``, both with exit status 0.
Every float option of every command goes through :func:`number` (a test walks the parsers), so a
non-finite or out-of-range value is refused in one line before any model is loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(
    kind: type[int] | type[float] = float,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    infinite_ok: bool = False,
) -> Callable[[str], int | float]:
    """An argparse ``type`` that parses a finite ``kind`` (``infinite_ok``: or an infinite one)
    within the given bounds; the error says which values are accepted."""
    bounds = [
        f">= {at_least:g}" if at_least is not None else "",
        f"> {above:g}" if above is not None else "",
        f"<= {at_most:g}" if at_most is not None else "",
    ]
    wanted = " and ".join(b for b in bounds if b)
    noun = "an integer" if kind is int else "a finite number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or math.isnan(value) or (math.isinf(value) and not infinite_ok):
            raise argparse.ArgumentTypeError(
                f"must be {noun}{' ' + wanted if wanted else ''}, got '{text}'"
            )
        if (
            (at_least is not None and value < at_least)
            or (above is not None and value <= above)
            or (at_most is not None and value > at_most)
        ):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


#: the common cases
finite = number(float)
non_negative = number(float, at_least=0)
positive = number(float, above=0)
count = number(int, at_least=1)
