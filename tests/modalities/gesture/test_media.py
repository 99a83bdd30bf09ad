"""Gesture media: GIF delays that keep time with the speech, a T-pose drawn where it stands,
and the files written (GIF, WAV, BVH that reads back to the motion)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from modalities.gesture.bvh import bvh_to_motion, read_bvh
from modalities.gesture.media import contact_sheet, gif_delays, render_frames, save_gesture_media
from modalities.gesture.skeleton import (
    default_skeleton,
    forward_kinematics,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)


@pytest.mark.parametrize("fps", [15.0, 30.0, 12.5])
def test_gif_delays_keep_within_ten_ms_of_the_clock(fps):
    delays = gif_delays(100, fps)
    assert all(d % 10 == 0 for d in delays)
    elapsed = np.cumsum(delays)
    assert np.abs(elapsed - 1000 * np.arange(1, 101) / fps).max() <= 5


def ink_width(view: np.ndarray) -> int:
    """Pixels between the leftmost and rightmost inked columns."""
    return int(np.ptp(np.nonzero(view.any(axis=0))[0]))


def test_a_t_pose_is_drawn_as_a_wide_cross_in_front_and_a_thin_one_from_the_side():
    skeleton = default_skeleton()
    rest = forward_kinematics(skeleton, torch.eye(3, dtype=torch.float64).expand(1, 25, 3, 3),
                              torch.zeros(1, 3, dtype=torch.float64)).numpy()  # fmt: skip
    (image,) = render_frames(rest, skeleton, size=100)
    ink = np.asarray(image.convert("L")) < 128
    front, side = ink[:, :99], ink[:, 101:]
    assert ink_width(front) > 60  # arms spread across the front view
    assert ink_width(side) < 20  # and hidden behind the body from the side
    with pytest.raises(ValueError, match="positions must be"):
        render_frames(rest[:, :5], skeleton)


def test_media_files_are_written_and_the_bvh_reads_back(tmp_path):
    skeleton = default_skeleton()
    frames = 30
    angles = torch.linspace(0, 1, frames)[:, None, None] * torch.ones(1, 25, 1)
    rotvecs = 0.3 * torch.cat([angles, 0 * angles, 0 * angles], -1).reshape(-1, 3).numpy()
    matrices = torch.from_numpy(Rotation.from_rotvec(rotvecs).as_matrix()).reshape(frames, 25, 3, 3)
    rotations = matrix_to_rotation_6d(matrices).float()
    root = torch.zeros(frames, 3)
    wave = 0.1 * torch.sin(torch.arange(16000) / 10)
    files = save_gesture_media(tmp_path, "take", skeleton, rotations, root, 30.0, wave)
    assert [f.name for f in files] == ["take.gif", "take.wav", "take.bvh"]
    with Image.open(files[0]) as gif:
        assert gif.n_frames == 15  # every second frame at 15 fps
    back, _ = bvh_to_motion(read_bvh(files[2]))
    torch.testing.assert_close(back, rotation_6d_to_matrix(rotations.double()), atol=1e-6, rtol=0)


def test_a_contact_sheet_places_images_in_reading_order():
    colours = ["red", "green", "blue"]
    sheet = contact_sheet([Image.new("RGB", (10, 5), c) for c in colours], columns=2)
    assert sheet.size == (20, 10)
    assert sheet.getpixel((15, 2)) == (0, 128, 0) and sheet.getpixel((5, 7)) == (0, 0, 255)
    assert sheet.getpixel((15, 7)) == (255, 255, 255)  # the empty cell stays white
