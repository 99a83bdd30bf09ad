"""Audio: language-queried audio separation (FlowSep) on real recordings.

- :mod:`.io` reads WAV/OGG/FLAC as mono float32 at one rate and writes WAV atomically;
- :mod:`.sources` prepares real recordings and sampled-instrument renders into a clip cache;
- :mod:`.captions` holds the text-query templates, with phrasings held out for evaluation;
- :mod:`.data` builds FlowSep-style mixtures: ``LASSMixtures`` and ``CaptionedWavFolder``;
- :mod:`.mel` computes log-mels and turns them back into waveforms (mixture phase, Griffin-Lim);
- :mod:`.vae` is the KL mel-VAE, trained by its own LightningModule and saved for the flow;
- :mod:`.evaluators` holds SDR, SI-SDR, their improvements and mel L1, overall and per class;
- :mod:`.media` writes mixture / estimate / reference WAVs and a spectrogram PNG.
"""

from .captions import CAPTION_TEMPLATES, NULL_CAPTION, captions_for, draw_caption, draw_captions
from .data import (
    CaptionedWavFolder,
    ClipSet,
    LASSMixtures,
    MixtureDataModule,
    MixtureDataset,
    mix_at_snr,
)
from .evaluators import (
    MelL1,
    ScaleInvariantSDR,
    ScaleInvariantSDRImprovement,
    SignalDistortionRatio,
    SignalDistortionRatioImprovement,
)
from .io import fit_length, load_audio, save_wav, split_into_clips
from .media import save_spectrogram_png, write_separation_examples
from .mel import GriffinLimInverter, LogMel, MelInverter, MixturePhaseInverter
from .sources import ALL_CLASSES, SourceSettings, midi_file_bytes, prepare_sources, render_midi
from .vae import MelAutoencoder, MelVAE

__all__ = [
    "ALL_CLASSES",
    "CAPTION_TEMPLATES",
    "NULL_CAPTION",
    "CaptionedWavFolder",
    "ClipSet",
    "GriffinLimInverter",
    "LASSMixtures",
    "LogMel",
    "MelAutoencoder",
    "MelInverter",
    "MelL1",
    "MelVAE",
    "MixtureDataModule",
    "MixtureDataset",
    "MixturePhaseInverter",
    "ScaleInvariantSDR",
    "ScaleInvariantSDRImprovement",
    "SignalDistortionRatio",
    "SignalDistortionRatioImprovement",
    "SourceSettings",
    "captions_for",
    "draw_caption",
    "draw_captions",
    "fit_length",
    "load_audio",
    "midi_file_bytes",
    "mix_at_snr",
    "prepare_sources",
    "render_midi",
    "save_spectrogram_png",
    "save_wav",
    "split_into_clips",
    "write_separation_examples",
]
