"""Real sources: the MIDI writer + fluidsynth, the prepared clip cache and LASSMixtures.

These use the Debian packages that ``make test`` installs (the Makefile lists them); when one
is missing they fail with the ``apt-get install`` line that fixes it (they never skip).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from modalities.audio import sources
from modalities.audio.captions import HELD_OUT_TEMPLATES
from modalities.audio.data import LASSMixtures
from modalities.audio.io import load_audio
from modalities.audio.sources import (
    ALL_CLASSES,
    MidiNote,
    midi_file_bytes,
    random_drum_pattern,
    random_melody,
    render_midi,
)

SMALL = {"max_clips_per_class": 10, "renders_per_program": 1, "render_seconds": 5.12}


def test_midi_writer_renders_to_non_silent_audio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, notes, program, channel in [
        ("piano", random_melody(sources.PITCH_RANGES["piano"], rng, 6, chords=True), 0, 0),
        ("drums", random_drum_pattern(rng, 6), 0, 9),
    ]:
        midi = midi_file_bytes(notes, program, channel, tempo_bpm=120)
        assert midi[:4] == b"MThd" and midi[14:18] == b"MTrk" and midi.endswith(b"\xff\x2f\x00")
        (tmp_path / f"{name}.mid").write_bytes(midi)
        audio = load_audio(render_midi(tmp_path / f"{name}.mid", tmp_path / f"{name}.wav"))
        assert audio.shape[0] > 3 * 16000  # 6 beats at 120 bpm = 3 s, plus the release tail
        assert audio.square().mean().sqrt() > 1e-3
    one_note = midi_file_bytes([MidiNote(0, 1, 60, 100)], program=0, tempo_bpm=120)
    track = one_note[22:]
    assert track == bytes.fromhex(
        "00ff5103 07a120 00c000 00903c64 8360803c00 00ff2f00".replace(" ", "")
    )


def test_missing_package_names_the_apt_get_install(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = sources.RecordedClass(Path("/nonexistent"), "*.wav", ("bucklespring-data",))
    monkeypatch.setitem(sources.RECORDED_CLASSES, "typing", gone)
    with pytest.raises(FileNotFoundError, match=r"apt-get install bucklespring-data`"):
        sources.require_packages(["speech", "typing"])


@pytest.fixture(scope="module")
def real_mixtures(tmp_path_factory: pytest.TempPathFactory) -> LASSMixtures:
    """A small real dataset: 10 clips per class from the installed Debian packages."""
    module = LASSMixtures(
        cache_dir=str(tmp_path_factory.mktemp("audio-cache")), batch_size=8, **SMALL
    )
    module.prepare_data()
    module.setup()
    return module


def test_real_sources_prepare_with_a_manifest(real_mixtures: LASSMixtures) -> None:
    manifest = json.loads((real_mixtures.clips_dir / "manifest.json").read_text())
    assert real_mixtures.clips_dir.parent.name == "audio"
    assert manifest["class_names"] == list(ALL_CLASSES)
    for name in ALL_CLASSES:
        counts = manifest["counts"][name]
        assert sum(counts.values()) == 10, (name, counts)
        assert counts["val"] >= 1 and counts["test"] >= 1
        assert manifest["seconds_per_class"][name] == pytest.approx(25.6)
    clip = manifest["clips"][0]
    assert set(clip) >= {"file", "class", "source", "source_sha256", "duration", "split"}
    assert len(clip["source_sha256"]) == 64 and clip["duration"] == pytest.approx(2.56)
    audio = load_audio(real_mixtures.clips_dir / clip["file"])
    assert audio.shape == (40960,)
    splits_of_source: dict[str, set[str]] = {}
    for entry in manifest["clips"]:
        splits_of_source.setdefault(entry["source"], set()).add(entry["split"])
    assert all(len(splits) == 1 for splits in splits_of_source.values())


def test_real_mixtures_batches(real_mixtures: LASSMixtures) -> None:
    batch = next(iter(real_mixtures.train_dataloader()))
    assert batch["mixture"].shape == (8, 40960) and len(batch["caption"]) == 8
    assert batch["mixture"].abs().max() <= 1.0
    held = {t for templates in HELD_OUT_TEMPLATES.values() for t in templates}
    assert not set(batch["caption"]) & held
    test = real_mixtures.datasets["test"]
    classes = test.clip_set.class_index
    assert (classes[test.fixed_draws["interferer"]] != classes).all()
    assert set(test.fixed_draws["caption"]) <= held


def test_real_cache_is_reused_and_eval_mixtures_repeat(
    real_mixtures: LASSMixtures, caplog: pytest.LogCaptureFixture
) -> None:
    again = LASSMixtures(cache_dir=str(real_mixtures.cache_root), batch_size=8, **SMALL)
    with caplog.at_level(logging.INFO, logger="modalities.audio.sources"):
        again.prepare_data()
    assert "preparing" not in caplog.text
    first = next(iter(real_mixtures.val_dataloader()))
    second = next(iter(again.val_dataloader()))
    assert (
        torch.equal(first["mixture"], second["mixture"]) and first["caption"] == second["caption"]
    )


def test_changed_source_checksum_rebuilds_with_a_log_line(
    real_mixtures: LASSMixtures, caplog: pytest.LogCaptureFixture
) -> None:
    manifest_path = real_mixtures.clips_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    original = manifest_path.read_text()
    speech = manifest["sources"]["speech"]
    speech[next(iter(speech))] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    try:
        with caplog.at_level(logging.INFO, logger="modalities.audio.sources"):
            rebuilt = sources.prepare_sources(real_mixtures.settings, real_mixtures.cache_root)
        assert "differ" in caplog.text and "rebuilding" in caplog.text
        assert rebuilt["counts"] == json.loads(original)["counts"]
    finally:
        manifest_path.write_text(original)
