"""lightning-score: score-based generative modeling through SDEs, on PyTorch Lightning."""

__version__ = "0.1.0"
