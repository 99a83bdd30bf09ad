"""L1 diversity against sequences with known spread."""

import numpy as np
import pytest

from modalities.gesture.diversity import l1_diversity


def test_a_joint_alternating_by_a_scores_a_and_a_still_one_zero():
    moving = np.zeros((10, 2, 3))
    moving[::2, 0, 0], moving[1::2, 0, 0] = 0.3, -0.3  # mean 0, every frame 0.3 away
    still = np.ones((6, 2, 3))
    assert l1_diversity([moving]) == pytest.approx(0.3)
    assert l1_diversity([still]) == 0.0
    # Frames weight the mean: 10 frames at 0.3 and 6 at 0 give 3 / 16.
    assert l1_diversity([moving, still]) == pytest.approx(3.0 / 16)


def test_each_sequence_is_centred_on_its_own_mean():
    shifted = np.zeros((4, 1, 3)) + np.array([5.0, -2.0, 1.0])
    assert l1_diversity([shifted]) == 0.0


def test_bad_sequences_fail():
    with pytest.raises(ValueError, match="no sequence"):
        l1_diversity([])
    with pytest.raises(ValueError, match=r"\[frames, joints, 3\]"):
        l1_diversity([np.zeros((4, 3))])
