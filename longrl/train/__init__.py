"""Training: chunked log-prob kernels, warm-up SFT, the GRPO/DAPO RL loop, checkpoints and telemetry.

Library entry points (imported from their modules; this package import stays light):

* :func:`longrl.train.sft.train_sft` -- one warm-up SFT stage;
* :func:`longrl.train.rl.train_rl` -- one RL phase (resumable, re-entrant after completion);
* :func:`longrl.train.rl.make_reward_fn` -- the configured hybrid reward as a ``reward_fn``;
* :mod:`longrl.train.checkpoint` -- atomic, verified checkpoints;
* :class:`longrl.train.telemetry.Telemetry` -- progress bar, metrics JSONL / TensorBoard / W&B.
"""
