"""The verl engine: each curriculum phase compiled into a verl job (docs/verl.md).

``mapping`` (pure, no verl import): longrl config -> verl hydra overrides. ``reward``: the hybrid reward
as verl's custom reward function. ``plugins`` (imports verl; loaded in verl's workers): longrl's
advantage estimators and policy losses registered in verl. ``run``: the phase orchestration.
"""
