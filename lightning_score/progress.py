"""Progress of long jobs (sampling, statistics, likelihood, training): a count and an ETA.

On a terminal a job shows a tqdm bar. Where the output goes to a file or a pipe (a batch job's
log, pytest's capture), a bar would only pile up carriage returns, so the same bar prints one
plain line every :data:`LOG_INTERVAL_S` seconds instead, plus its final state; a job shorter than
that prints nothing at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between two progress lines in a log file
LINE_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
OPEN_LINE_FORMAT = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"  # total unknown


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar makes sense)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LogLines(tqdm):
    """A tqdm bar for log files: one line (count, percentage, elapsed < remaining, rate) every
    ``interval`` seconds (default :data:`LOG_INTERVAL_S`), and the final state when it closes if
    it printed anything before."""

    def __init__(self, *args: Any, interval: float | None = None, **kwargs: Any) -> None:
        interval = LOG_INTERVAL_S if interval is None else interval
        self._interval = interval
        self._last_line: float | None = None
        self._printed_n: float | None = None
        kwargs.setdefault("mininterval", min(interval, 0.1))  # tqdm's own gate before display()
        super().__init__(*args, **kwargs)
        if getattr(self, "bar_format", "") is None:  # tqdm has inferred the total by now
            self.bar_format = LINE_FORMAT if self.total else OPEN_LINE_FORMAT

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None or not hasattr(self, "start_t"):  # clearing, or still in __init__
            return False
        since = self._time() - (self.start_t if self._last_line is None else self._last_line)
        if since >= self._interval:
            self._write_line()
        return True

    def _write_line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._last_line = self._time()
        self._printed_n = self.n

    def close(self) -> None:
        if not self.disable and self._last_line is not None and self._printed_n != self.n:
            self._write_line()  # the final count of a job that has been reporting
        self.leave = False  # tqdm's own close would redraw the bar and end it with a newline
        super().close()


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    file: IO[str] | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar with count and ETA on a terminal, :class:`LogLines` elsewhere; ``enabled=False``
    (e.g. on ranks other than 0) gives a silent one. Use it like tqdm (iterate, ``update``)."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    file = file or sys.stderr
    if is_terminal(file):
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            leave=leave,
            file=file,
            dynamic_ncols=True,
            **kwargs,
        )
    return LogLines(iterable, total=total, desc=desc, unit=unit, file=file, **kwargs)
