"""Reading and writing waveforms (WAV, OGG/Vorbis, FLAC) with soundfile: what every modality
with sound in it (audio separation, co-speech gestures) reads its recordings with.

Waveforms are mono float32 in [-1, 1] at one sample rate. :func:`load_audio` gets any file there:

- several channels are **downmixed to mono** by averaging them (a stereo recording of one
  source keeps its level; the average of two channels cannot clip);
- a file at another rate is **resampled** with ``torchaudio.functional.resample`` (windowed
  sinc, band-limited to the lower of the two Nyquist frequencies), so an 8 kHz recording
  holds no content above 4 kHz after upsampling to 16 kHz.

Errors a user can cause (a missing, empty, truncated or corrupt file) end in one
``FileNotFoundError`` / ``ValueError`` that names the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from torch import Tensor

__all__ = ["load_audio", "save_wav"]


def load_audio(path: str | Path, sample_rate: int = 16000) -> Tensor:
    """The file at ``path`` as a mono float32 waveform ``[T]`` at ``sample_rate`` Hz.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty (0 bytes or 0 frames), truncated, not decodable, or holds
            NaN or infinite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"audio file {path} is empty (0 bytes)")
    try:
        frames, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as error:
        raise ValueError(f"audio file {path} is truncated or corrupt: {error}") from error
    if frames.shape[0] == 0:
        raise ValueError(f"audio file {path} holds no audio frames (empty, truncated or corrupt)")
    finite = np.isfinite(frames).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ValueError(
            f"audio file {path} holds NaN or infinite samples (first at frame {first})"
        )
    _check_wav_complete(path)
    mono = torch.from_numpy(np.ascontiguousarray(frames.mean(axis=1)))
    if file_rate != sample_rate:
        mono = AF.resample(mono, orig_freq=file_rate, new_freq=sample_rate)
    return mono.clamp(-1.0, 1.0).contiguous()


def _check_wav_complete(path: Path) -> None:
    """Raise ``ValueError`` if a RIFF/WAVE file ends before its ``data`` chunk does.

    libsndfile reads a truncated WAV without complaint (it returns the frames that are there),
    which would silently shorten a clip; the header's declared ``data`` size tells.
    Sizes ``0`` and ``0xFFFFFFFF`` mean "unknown" (streamed WAVs) and are accepted.
    """
    with open(path, "rb") as handle:
        header = handle.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        file_size = path.stat().st_size
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                if chunk_size not in (0, 0xFFFFFFFF) and handle.tell() + chunk_size > file_size:
                    raise ValueError(
                        f"audio file {path} is truncated: its data chunk declares "
                        f"{chunk_size} bytes but only {file_size - handle.tell()} are present"
                    )
                return
            handle.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)


def save_wav(path: str | Path, audio: Tensor, sample_rate: int) -> Path:
    """Write a mono ``[T]`` waveform in [-1, 1] as 16-bit PCM WAV, atomically.

    The file is written to a temporary name in the same folder and moved over ``path`` with
    ``os.replace``, so a reader never sees a half-written file. A waveform with NaN or infinite
    samples is refused (PCM has no NaN: it would be written as full-scale noise or DC).
    """
    path = Path(path)
    if audio.ndim != 1:
        raise ValueError(f"save_wav expects a mono waveform [T], got shape {tuple(audio.shape)}")
    if not bool(torch.isfinite(audio).all()):
        raise ValueError(f"{path}: the waveform holds NaN or infinite samples; not writing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = audio.detach().to(torch.float32).clamp(-1.0, 1.0).cpu().numpy()
    handle, temporary = tempfile.mkstemp(suffix=".wav", dir=path.parent)
    os.close(handle)
    try:
        soundfile.write(temporary, samples, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
