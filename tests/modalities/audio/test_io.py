"""Fitting audio to a window and cutting recordings into clips."""

from __future__ import annotations

import pytest
import torch

from modalities.audio.io import fit_length, split_into_clips


def test_short_clip_is_padded_or_rejected() -> None:
    short = torch.ones(100)
    padded = fit_length(short, 160)
    assert padded.shape == (160,) and padded[:100].eq(1).all() and padded[100:].eq(0).all()
    assert fit_length(torch.ones(200), 160).shape == (160,)
    ramp = torch.arange(200.0)
    assert torch.equal(fit_length(ramp, 160), ramp[:160])  # a long clip keeps its start
    assert torch.equal(fit_length(ramp[:100], 100, mode="error"), ramp[:100])
    with pytest.raises(ValueError, match="shorter than the window"):
        fit_length(short, 160, mode="error")


def test_split_into_clips_cuts_long_and_pads_short() -> None:
    assert split_into_clips(torch.ones(50), 100).shape == (1, 100)
    assert split_into_clips(torch.ones(260), 100).shape == (3, 100)  # last 60 kept, padded
    assert split_into_clips(torch.ones(230), 100).shape == (2, 100)  # last 30 dropped
    ramp = torch.arange(1.0, 261.0)
    clips = split_into_clips(ramp, 100)
    assert torch.equal(clips[:2], ramp[:200].reshape(2, 100))  # consecutive, non-overlapping
    assert torch.equal(clips[2, :60], ramp[200:]) and not clips[2, 60:].any()
    assert torch.equal(split_into_clips(ramp[:230], 100), ramp[:200].reshape(2, 100))
    short = split_into_clips(ramp[:50], 100)[0]
    assert torch.equal(short[:50], ramp[:50]) and not short[50:].any()
