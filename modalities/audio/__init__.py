"""Audio: language-queried audio separation (FlowSep) on real recordings.

- :mod:`.io` reads WAV/OGG/FLAC as mono float32 at one rate and writes WAV atomically;
- :mod:`.sources` prepares real recordings and sampled-instrument renders into a clip cache;
- :mod:`.captions` holds the text-query templates, with phrasings held out for evaluation;
- :mod:`.data` builds FlowSep-style mixtures: ``LASSMixtures`` and ``CaptionedWavFolder``;
- :mod:`.mel` computes log-mels and turns them back into waveforms (mixture phase, Griffin-Lim);
- :mod:`.vae` is the KL mel-VAE, trained by its own LightningModule and saved for the flow;
- :mod:`.text` encodes text queries with a frozen pretrained sentence encoder (MiniLM);
- :mod:`.adapter` is FlowSep: the flow's modality adapter (latents, mixture, query, decoding);
- :mod:`.baseline` is the discriminative mask separator FlowSep is compared with;
- :mod:`.evaluators` holds SDR, SI-SDR, their improvements and mel L1, overall and per class;
- :mod:`.classifier` is an audio classifier on the source classes and the query accuracy it
  scores separated estimates with;
- :mod:`.vocoder` is a small neural vocoder (HiFi-GAN generator, no GAN) with its own recipe;
- :mod:`.media` writes mixture / estimate / reference WAVs and a spectrogram PNG.
"""

from .adapter import FlowSepAdapter
from .baseline import MaskSeparator
from .captions import CAPTION_TEMPLATES, NULL_CAPTION, captions_for, draw_caption, draw_captions
from .classifier import AudioClassifier, QueryAccuracy
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
    separation_metrics,
)
from .io import fit_length, load_audio, save_wav, split_into_clips
from .media import save_spectrogram_png, write_separation_examples
from .mel import GriffinLimInverter, LogMel, MelInverter, MixturePhaseInverter
from .sources import ALL_CLASSES, SourceSettings, midi_file_bytes, prepare_sources, render_midi
from .text import EncodedText, SentenceEncoder, default_text_encoder_path
from .vae import MelAutoencoder, MelVAE
from .vocoder import MelVocoder, VocoderGenerator, VocoderInverter

__all__ = [
    "ALL_CLASSES",
    "CAPTION_TEMPLATES",
    "NULL_CAPTION",
    "AudioClassifier",
    "CaptionedWavFolder",
    "ClipSet",
    "EncodedText",
    "FlowSepAdapter",
    "GriffinLimInverter",
    "LASSMixtures",
    "LogMel",
    "MaskSeparator",
    "MelAutoencoder",
    "MelInverter",
    "MelL1",
    "MelVAE",
    "MelVocoder",
    "MixtureDataModule",
    "MixtureDataset",
    "MixturePhaseInverter",
    "QueryAccuracy",
    "ScaleInvariantSDR",
    "ScaleInvariantSDRImprovement",
    "SentenceEncoder",
    "SignalDistortionRatio",
    "SignalDistortionRatioImprovement",
    "SourceSettings",
    "VocoderGenerator",
    "VocoderInverter",
    "captions_for",
    "default_text_encoder_path",
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
    "separation_metrics",
    "split_into_clips",
    "write_separation_examples",
]
