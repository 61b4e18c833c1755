"""Engines: what runs one curriculum phase (DESIGN.md "Engines: three tiers, one config").

``own`` -- longrl's trainer (``longrl.train``), the default; ``verl`` -- the phase compiled into a verl
job (``longrl.engines.verl``). The pipeline (phases, retrospective pool, data per phase, checkpoint
hand-over, evaluation) is longrl's either way.
"""

ENGINES = ("own", "verl")
