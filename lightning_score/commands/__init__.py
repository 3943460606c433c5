"""Sub-commands of ``lscore``: each module exposes ``add_arguments(parser)`` and ``run(args)``."""
