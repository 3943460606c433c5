"""Training: the LightningModule, its EMA, checkpoints that survive kills, callbacks and progress.

``run.train(cfg)`` wires a config into a Lightning ``Trainer``; everything else here is a piece a
user can also hand to a ``Trainer`` of their own (``ScoreModule``, ``EMA``)."""
