"""Separation examples written as WAVs and a spectrogram PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from modalities.audio.media import save_spectrogram_png, write_separation_examples
from modalities.audio.mel import LogMel


def tone(hz: float, samples: int = 8000) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * hz * torch.arange(samples) / 16000)


def test_write_separation_examples(tmp_path) -> None:
    reference = tone(440.0)
    mixture = reference + tone(1200.0) * 3  # clips above 1: written clipped
    estimate = reference.unsqueeze(0)
    paths = write_separation_examples(
        tmp_path / "media", "ex0", mixture, estimate, reference, 16000
    )
    names = [p.name for p in paths]
    assert names == ["ex0_mixture.wav", "ex0_estimate.wav", "ex0_reference.wav", "ex0.png"]
    for path in paths[:3]:
        samples, rate = soundfile.read(str(path))
        assert rate == 16000 and samples.shape == (8000,)
        assert abs(samples).max() <= 1.0
    samples, _ = soundfile.read(str(paths[2]))
    assert torch.allclose(torch.from_numpy(samples).float(), reference, atol=1e-4)
    assert paths[3].stat().st_size > 1000
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 16-bit PCM of the waveforms clipped to [-1, 1]; the estimate is the reference here.
    for path, expected in ((paths[0], mixture.clamp(-1, 1)), (paths[1], reference)):
        samples, _ = soundfile.read(str(path))
        assert torch.allclose(torch.from_numpy(samples).float(), expected, atol=1e-4), path.name
    assert abs(soundfile.read(str(paths[0]))[0]).max() > 0.999  # the clipped peaks reach 1
    with Image.open(paths[3]) as image:
        assert image.size == (3 * 400, 300)  # three 4 x 3 inch panels at 100 dpi


def test_given_log_mels_are_plotted(tmp_path) -> None:
    mel = LogMel()
    log_mels = {
        "mixture": mel(tone(300.0)[None]),
        "estimate": mel(tone(310.0)[None])[0],
        "reference": mel(tone(300.0)[None])[0],
    }
    path = save_spectrogram_png(log_mels, tmp_path / "mels.png")
    assert path.stat().st_size > 1000
    paths = write_separation_examples(
        tmp_path, "ex1", tone(300.0), tone(310.0), tone(300.0), 16000, log_mels=log_mels
    )
    assert paths[-1].stat().st_size > 1000
    # The given log-mels are what is drawn: the same picture as plotting them directly.
    with Image.open(path) as direct, Image.open(paths[-1]) as written:
        assert direct.size == written.size == (1200, 300)
        assert np.array_equal(np.asarray(direct), np.asarray(written))


def test_bad_shapes_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="estimate"):
        write_separation_examples(tmp_path, "x", tone(300.0), torch.zeros(2, 8000), tone(300.0))
    with pytest.raises(ValueError, match="reference"):
        save_spectrogram_png({"reference": torch.zeros(2, 3, 4, 5)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        save_spectrogram_png({}, tmp_path / "x.png")
