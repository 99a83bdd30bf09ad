"""Upper bounds of the audio separators: the true source's log-mel through each inverter.

On the fixed test mixtures of ``LASSMixtures(clip_seconds=1.28)`` (the FlowSep recipes' data)
this scores, with the separation metrics of the audio modality,

- ``true_mel/<inverter>``: the *true* target's log-mel turned back into a waveform — the best
  any mel-domain separator can do with that inverter;
- ``vae_reconstruction/<inverter>``: the target's log-mel encoded and decoded by the trained
  mel-VAE — the best the flow can do, since it generates VAE latents;

and prints and saves ``{name: {"si_sdri", "sdri"}}`` plus the VAE's test mel L1.

    python -m benchmarks.audio_ceilings --vae outputs/audio/mel_vae/pretrained \
        --vocoder outputs/audio/vocoder/pretrained --out outputs/audio/ceilings.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from modalities.audio import (
    GriffinLimInverter,
    LASSMixtures,
    MelVAE,
    MixturePhaseInverter,
    VocoderInverter,
)
from modalities.audio.evaluators import plain_sdr, si_sdr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="outputs/audio/mel_vae/pretrained")
    parser.add_argument("--out", default="outputs/audio/ceilings.json")
    parser.add_argument("--clip_seconds", type=float, default=1.28)
    parser.add_argument(
        "--vocoder", default=None, help="a MelVocoder folder to score as a fourth inverter"
    )
    args = parser.parse_args()
    vae = MelVAE.from_pretrained(args.vae)
    data = LASSMixtures(clip_seconds=args.clip_seconds, batch_size=32)
    data.prepare_data()
    data.setup()
    mel = vae.mel
    inverters = {
        "mixture_phase": MixturePhaseInverter(mel),
        "mixture_phase_pinv": MixturePhaseInverter(mel, magnitude="pinv"),
        "griffin_lim": GriffinLimInverter(mel),
    }
    if args.vocoder is not None:
        inverters["vocoder"] = VocoderInverter(args.vocoder)
    scores: dict[str, list[torch.Tensor]] = {}
    mel_l1 = []
    for batch in data.test_dataloader():
        target, mixture = batch["target"], batch["mixture"]
        log_mel = mel(target)
        with torch.no_grad():
            reconstruction = vae.decode(vae.encode(log_mel), log_mel.shape[-1])
        mel_l1.append((reconstruction - log_mel).abs().mean((1, 2)))
        baseline = torch.stack([si_sdr(mixture, target), plain_sdr(mixture, target)])
        for source, estimate_mel in (("true_mel", log_mel), ("vae_reconstruction", reconstruction)):
            for name, inverter in inverters.items():
                estimate = inverter(estimate_mel, mixture, target.shape[-1])
                score = torch.stack([si_sdr(estimate, target), plain_sdr(estimate, target)])
                scores.setdefault(f"{source}/{name}", []).append(score - baseline)
    results = {
        name: dict(zip(("si_sdri", "sdri"), torch.cat(values, 1).mean(1).tolist(), strict=True))
        for name, values in scores.items()
    }
    results["vae_test_mel_l1"] = float(torch.cat(mel_l1).mean())
    results["test_mixtures"] = int(torch.cat(mel_l1).numel())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
