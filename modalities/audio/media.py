"""Writers of separation examples a person can listen to and look at: WAVs and a mel PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .io import save_wav
from .mel import LogMel

__all__ = ["save_spectrogram_png", "write_separation_examples"]


def save_spectrogram_png(
    log_mels: dict[str, Tensor],
    path: str | Path,
    sample_rate: int = 16000,
    hop_length: int = 160,
    title: str | None = None,
) -> Path:
    """Plot log-mels ``[n_mels, frames]`` (or ``[1, n_mels, frames]``) side by side in one PNG.

    One panel per entry, titled by its key (e.g. mixture / estimate / reference), time in
    seconds (``frame * hop_length / sample_rate``) on x, mel band on y, one shared colour range
    so the panels compare directly; ``title`` (e.g. the text query) goes above them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_mels:
        raise ValueError("save_spectrogram_png: `log_mels` is empty")
    images = {panel: _as_image(panel, mel) for panel, mel in log_mels.items()}
    low = min(float(image.min()) for image in images.values())
    high = max(float(image.max()) for image in images.values())
    figure, axes = plt.subplots(
        1, len(images), figsize=(4 * len(images), 3), squeeze=False, constrained_layout=True
    )
    for axis, (panel, image) in zip(axes[0], images.items()):
        seconds = image.shape[1] * hop_length / sample_rate
        shown = axis.imshow(
            image,
            origin="lower",
            aspect="auto",
            extent=(0.0, seconds, 0, image.shape[0]),
            vmin=low,
            vmax=high,
            cmap="magma",
        )
        axis.set_title(panel)
        axis.set_xlabel("time (s)")
        axis.set_ylabel("mel band")
    figure.colorbar(shown, ax=axes[0].tolist(), label="log magnitude")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path


def write_separation_examples(
    directory: str | Path,
    name: str,
    mixture: Tensor,
    estimate: Tensor,
    reference: Tensor,
    sample_rate: int = 16000,
    log_mels: dict[str, Tensor] | None = None,
    hop_length: int = 160,
    title: str | None = None,
) -> list[Path]:
    """Write ``{name}_mixture.wav``, ``{name}_estimate.wav``, ``{name}_reference.wav``, ``{name}.png``.

    Waveforms are ``[T]`` (or ``[1, T]``), clipped to [-1, 1] and stored as 16-bit PCM.
    ``log_mels`` (title -> ``[n_mels, frames]``) are plotted; when ``None`` they are computed
    from the three waveforms with a :class:`LogMel` at ``sample_rate`` (bands up to Nyquist).
    ``hop_length`` (samples per mel frame) labels the time axis; ``title`` heads the PNG.
    Returns the four paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    waveforms = {"mixture": mixture, "estimate": estimate, "reference": reference}
    paths = [
        save_wav(directory / f"{name}_{role}.wav", _as_mono(role, waveform).float(), sample_rate)
        for role, waveform in waveforms.items()
    ]
    if log_mels is None:
        mel = LogMel(sample_rate=sample_rate, hop_length=hop_length, f_max=sample_rate / 2)
        log_mels = {role: mel(_as_mono(role, w).float())[0] for role, w in waveforms.items()}
    png = directory / f"{name}.png"
    paths.append(save_spectrogram_png(log_mels, png, sample_rate, hop_length, title))
    return paths


def write_separation_batch(
    directory: Path,
    name: str,
    estimates: Tensor,
    batch: dict[str, Any],
    count: int,
    sample_rate: int,
    hop_length: int,
) -> list[Path]:
    """:func:`write_separation_examples` for the first ``count`` estimates ``[B, T]`` of a
    batch with ``mixture`` and ``target`` (titled with the ``caption`` query when there is one).
    """
    if "mixture" not in batch or "target" not in batch:
        return []
    written = []
    for index in range(min(count, estimates.shape[0])):
        caption = batch["caption"][index] if "caption" in batch else ""
        written += write_separation_examples(
            directory,
            f"{name}_{index}",
            batch["mixture"][index].cpu(),
            estimates[index].cpu(),
            batch["target"][index].cpu(),
            sample_rate=sample_rate,
            hop_length=hop_length,
            title=f"query: {caption!r}",
        )
    return written


def _as_mono(role: str, waveform: Tensor) -> Tensor:
    if waveform.ndim == 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.ndim != 1:
        raise ValueError(
            f"`{role}` must be one waveform [T] or [1, T], got {tuple(waveform.shape)}"
        )
    return waveform.detach().cpu()


def _as_image(title: str, log_mel: Tensor) -> np.ndarray:
    image = log_mel.detach().float().cpu()
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(
            f"log_mels[{title!r}] must be [n_mels, frames] or [1, n_mels, frames], "
            f"got {tuple(log_mel.shape)}"
        )
    return image.numpy()
