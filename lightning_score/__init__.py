"""lightning-score: score-based generative modeling through SDEs, on PyTorch Lightning.

The names a user reaches for from Python (the README's "From Python") are importable from here,
imported on first use (PEP 562), so that ``import lightning_score`` and ``lscore --help`` stay
free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ScorePipeline": "lightning_score.interop.pipeline",
    "PipelineOutput": "lightning_score.interop.pipeline",
    "ScoreModule": "lightning_score.training.module",
    "trainer_settings": "lightning_score.training.run",
    "method_callbacks": "lightning_score.training.run",
    "train": "lightning_score.training.run",
    "load_score_model": "lightning_score.training.checkpoint",
    "load_config": "lightning_score.experiment",
    "build_datamodule": "lightning_score.data",
    "sample": "lightning_score.sampling",
    "generate": "lightning_score.sampling.generate",
    "export": "lightning_score.interop.export",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_score' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
