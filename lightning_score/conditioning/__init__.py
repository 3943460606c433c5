"""Controllable generation: linear operators, guided scores and projection hooks, inverse problems,
the noise-conditional classifier and class-conditional sampling, with their inputs and figures.

Everything enters the samplers through two seams of ``sampling.sample``: a wrapped ``score_fn``
and a step ``hook``."""
