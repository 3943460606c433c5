"""Other formats in and out: official score_sde_pytorch checkpoints, safetensors and diffusers
exports, diffusers models as score models, and the Python pipeline for notebooks."""
