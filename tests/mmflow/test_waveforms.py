"""Reading, downmixing and resampling waveforms, writing them atomically; clear errors for bad
files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from mmflow.waveforms import load_audio, save_wav


def _tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)


def test_stereo_44k_becomes_16k_mono_with_the_same_tone(tmp_path: Path) -> None:
    left = _tone(440.0, 1.0, 44100)
    stereo = np.stack([left, 0.5 * left], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", stereo, 44100)
    audio = load_audio(tmp_path / "tone.wav", 16000)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    assert audio.shape[0] == 16000
    spectrum = torch.fft.rfft(audio).abs()
    assert spectrum.argmax().item() == 440  # 1 s of audio: bin k is k Hz
    assert audio.abs().max() == pytest.approx(0.375, abs=0.01)  # mean of 0.5 and 0.25 peaks


def test_ogg_and_flac_load(tmp_path: Path) -> None:
    tone = _tone(1000.0, 0.5, 16000).astype(np.float32)
    for suffix in ("ogg", "flac"):
        soundfile.write(tmp_path / f"tone.{suffix}", tone, 16000)
        audio = load_audio(tmp_path / f"tone.{suffix}")
        assert audio.shape[0] == 8000
        assert torch.fft.rfft(audio).abs().argmax().item() == 500  # 0.5 s: bin k is 2k Hz
    # FLAC is lossless: the 16-bit samples come back within half a quantisation step.
    flac = load_audio(tmp_path / "tone.flac")
    assert torch.allclose(flac, torch.from_numpy(tone), atol=1 / 32768)


def test_missing_empty_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav.*empty"):
        load_audio(tmp_path / "empty.wav")
    soundfile.write(tmp_path / "noframes.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="noframes.wav"):
        load_audio(tmp_path / "noframes.wav")
    soundfile.write(tmp_path / "whole.wav", _tone(440.0, 1.0, 16000), 16000)
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.wav.*truncated"):
        load_audio(tmp_path / "cut.wav")
    (tmp_path / "header.wav").write_bytes(data[:30])
    with pytest.raises(ValueError, match="header.wav.*truncated or corrupt"):
        load_audio(tmp_path / "header.wav")
    (tmp_path / "noise.ogg").write_bytes(b"not an ogg file at all" * 10)
    with pytest.raises(ValueError, match="noise.ogg"):
        load_audio(tmp_path / "noise.ogg")


def test_save_wav_round_trips_without_leftovers(tmp_path: Path) -> None:
    audio = torch.from_numpy(_tone(300.0, 0.25, 16000).astype(np.float32))
    path = save_wav(tmp_path / "sub" / "out.wav", audio, 16000)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]
    assert torch.allclose(load_audio(path), audio, atol=1e-4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_are_refused_on_reading_and_writing(tmp_path: Path, bad: float) -> None:
    samples = np.zeros(1600, dtype=np.float32)
    samples[700] = bad
    path = tmp_path / "bad.wav"
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(
        ValueError, match="bad.wav holds NaN or infinite samples \\(first at frame 700\\)"
    ):
        load_audio(path)
    out = tmp_path / "out.wav"
    with pytest.raises(ValueError, match="out.wav: the waveform holds NaN or infinite"):
        save_wav(out, torch.from_numpy(samples), 16000)
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
