"""Train a score model: ``python train.py [--config PATH] [key=value ...]``.

With no arguments it runs the offline quickstart (configs/quickstart.yaml). W&B sweep agents call
it with ``${args_no_hyphens}``, i.e. OmegaConf dotlist overrides.
"""

import sys

from lightning_score.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog="train.py"))
