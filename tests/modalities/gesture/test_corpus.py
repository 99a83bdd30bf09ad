"""The synthetic co-speech corpus on the real prompts: split by prompt, recorded and synthetic
speech named, prepared once; and beat consistency measures alignment on it (the ground truth
scores above the same motion a second late)."""

import json

import numpy as np

from mmflow.waveforms import load_audio
from modalities.gesture.beat import beat_consistency, joint_speed
from modalities.gesture.bvh import bvh_to_motion, read_bvh
from modalities.gesture.corpus import (
    CorpusSettings,
    asterisk_prompts,
    cospeech_cache_dir,
    prepare_cospeech,
    split_prompts,
)
from modalities.gesture.skeleton import default_skeleton, forward_kinematics
from modalities.gesture.speech import audio_onsets

from .conftest import TINY_CORPUS

FPS = 30


def test_prompts_have_spoken_transcripts_and_split_disjointly():
    prompts = asterisk_prompts()
    assert len(prompts) > 400
    assert all(p.path.is_file() and p.text and p.text[0] not in "[(" for p in prompts)
    assert not any(p.name.startswith("silence/") for p in prompts)
    splits = split_prompts(prompts, CorpusSettings())
    names = {split: {p.name for p in chosen} for split, chosen in splits.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert sum(len(n) for n in names.values()) == len(prompts)
    assert len(names["test"]) == round(0.1 * len(prompts))


def test_recordings_keep_to_their_split_and_name_what_is_synthetic(tiny_corpus):
    manifest, root = tiny_corpus
    folder = cospeech_cache_dir(root, TINY_CORPUS)
    recordings = manifest["recordings"]
    split_of_prompt = {}
    for recording in recordings:
        for prompt in recording["prompts"]:
            assert split_of_prompt.setdefault(prompt, recording["split"]) == recording["split"]
        assert (folder / f"{recording['name']}.bvh").is_file()
        assert (folder / f"{recording['name']}.wav").is_file()
        assert recording["motion"] == "synthetic"
    kinds = {(r["speaker"], r["speech"]) for r in recordings}
    assert kinds == {("asterisk/allison", "recorded"), ("espeak-ng/en-us", "synthetic")}
    assert {r["split"] for r in recordings} == {"train", "val", "test"}
    assert json.loads((folder / "manifest.json").read_text()) == manifest


def test_a_prepared_corpus_is_reused_and_other_settings_get_their_own(tiny_corpus):
    manifest, root = tiny_corpus
    folder = cospeech_cache_dir(root, TINY_CORPUS)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert prepare_cospeech(TINY_CORPUS, root) == manifest
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    other = CorpusSettings(max_prompts=30, voices=(), recording_seconds=8.0, seed=1)
    assert cospeech_cache_dir(root, other) != folder


def test_beat_consistency_of_the_ground_truth_beats_the_motion_a_second_late(tiny_corpus):
    manifest, root = tiny_corpus
    folder = cospeech_cache_dir(root, TINY_CORPUS)
    skeleton = default_skeleton()
    joints = list(skeleton.parts["upper"]) + [
        skeleton.index("LeftHand"),
        skeleton.index("RightHand"),
    ]
    motions, onsets = [], []
    for recording in manifest["recordings"]:
        path = folder / recording["name"]
        rotations, root_translation = bvh_to_motion(read_bvh(path.with_suffix(".bvh")))
        motions.append(forward_kinematics(skeleton, rotations, root_translation).numpy())
        onsets.append(audio_onsets(load_audio(path.with_suffix(".wav")).numpy(), 16000))
    mean_speed = np.concatenate([joint_speed(m, FPS) for m in motions]).mean(axis=0)
    aligned, shifted = [], []
    for motion, onset in zip(motions, onsets):
        if len(motion) < 6 * FPS:  # BC leaves out 2 s at each end, and the shift takes 1 s
            continue
        aligned.append(beat_consistency(motion, FPS, onset, joints, mean_speed))
        # The motion a second late: frame f + 30 shown at time f.
        shifted.append(beat_consistency(motion[FPS:], FPS, onset, joints, mean_speed))
    assert len(aligned) >= 6
    assert np.mean(aligned) > np.mean(shifted) + 0.05, (np.mean(aligned), np.mean(shifted))
