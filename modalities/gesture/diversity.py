"""L1 diversity (L1div) of generated motion, as EMAGE reports it beside BC and FGD."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def l1_diversity(sequences: Iterable[np.ndarray]) -> float:
    """Mean per-frame L1 distance of each pose from its own sequence's mean pose:

        L1div = sum_s sum_f sum_d |x^s_{f,d} - mean_f x^s_{f,d}| / sum_s F_s

    over sequences ``s`` of joint positions ``[F_s, J, 3]`` (the root translation removed by
    the caller, as EMAGE zeroes it). Larger means the motion ranges wider within a sequence.

    Raises:
        ValueError: no sequence, or a sequence that is not ``[frames, joints, 3]``.
    """
    total, frames = 0.0, 0
    for sequence in sequences:
        sequence = np.asarray(sequence, dtype=np.float64)
        if sequence.ndim != 3 or sequence.shape[-1] != 3 or len(sequence) == 0:
            raise ValueError(
                f"l1_diversity: a sequence must be [frames, joints, 3], got {sequence.shape}"
            )
        total += float(np.abs(sequence - sequence.mean(axis=0)).sum())
        frames += len(sequence)
    if frames == 0:
        raise ValueError("l1_diversity: no sequence to score")
    return total / frames
