"""DAPO overlong reward shaping ("soft overlong punishment").

Equation
--------
DAPO (arXiv 2503.14476, Sec. 3.4 "Overlong Reward Shaping", the R_length equation), with ``L_max`` the generation budget and ``L_cache`` the
buffer, ``R_length(y)`` is

* ``0``                                     if ``|y| <= L_max - L_cache``
* ``((L_max - L_cache) - |y|) / L_cache``  if ``L_max - L_cache < |y| <= L_max``
* ``-1``                                    if ``|y| > L_max``

scaled here by ``factor`` (verl ``overlong_buffer.penalty_factor``) and added to the task reward by the
caller. QwenLong-L1 (arXiv 2505.17667) trains with DAPO and this shaping.

Differences from verl
---------------------
* verl computes ``min(-(|y| - (L_max - L_cache)) / L_cache * factor, 0)`` with no lower bound (it cannot
  see ``|y| > L_max`` because generation stops there); we clamp at ``-factor`` as the paper's third case
  says, so a longer length passed in by mistake can never push the penalty below ``-factor``.
* ``buffer = 0`` is allowed (verl asserts ``len > 0``): the shaping is then a step, 0 up to ``L_max``
  and ``-factor`` beyond.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def overlong_penalty(
    lengths_N: torch.Tensor | Sequence[int],
    max_len: int,
    buffer: int,
    factor: float = 1.0,
) -> torch.Tensor:
    """Penalty per response, ``penalty_N`` (float32, every entry in ``[-factor, 0]``).

    ``lengths_N`` are response lengths in tokens, ``max_len`` is L_max (the generation budget) and
    ``buffer`` is L_cache. The penalty is 0 up to ``max_len - buffer`` and falls linearly to ``-factor``
    at ``max_len``.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    if not 0 <= buffer <= max_len:
        raise ValueError(f"buffer must be in [0, max_len={max_len}], got {buffer}")
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    lengths_N = torch.as_tensor(lengths_N, dtype=torch.float32)
    if bool((lengths_N < 0).any()):
        raise ValueError("lengths must be >= 0")
    if buffer == 0:
        return torch.where(lengths_N > max_len, -float(factor), 0.0)
    exceed_N = lengths_N - (max_len - buffer)
    return (-exceed_N / buffer * factor).clamp(min=-float(factor), max=0.0)
