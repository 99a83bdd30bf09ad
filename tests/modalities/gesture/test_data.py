"""BVH + WAV folders as windows: layout, splits, resampling, and a clear error for each bad
input (a BVH with missing channels, a WAV shorter than a window, silence, a missing WAV, a
length mismatch)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from modalities.gesture.bvh import BvhError, bvh_to_motion, motion_to_bvh, read_bvh, write_bvh
from modalities.gesture.data import BvhWavFolder, SyntheticCoSpeech, infer_parts, load_recording
from modalities.gesture.skeleton import default_skeleton, rotation_6d_to_matrix
from modalities.gesture.synthesis import STYLES, synthesize_motion

from .conftest import TINY_CORPUS
from .test_speech import RATE, click_track

FPS = 30


def write_pair(folder: Path, name: str, seconds: float, seed: int, fps: int = FPS) -> Path:
    """A click-track WAV and its synthesised motion (BVH at ``fps``) as ``folder/name``."""
    rng = np.random.default_rng(seed)
    wave = click_track(np.sort(rng.uniform(0.3, seconds - 0.3, int(seconds * 2))), seconds)
    rotations, root = synthesize_motion(wave, RATE, STYLES["calm"], rng, fps=fps)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path.with_suffix(".wav"), wave.astype(np.float32), RATE)
    bvh = motion_to_bvh(
        default_skeleton(), torch.from_numpy(rotations), torch.from_numpy(root), 1 / fps
    )
    write_bvh(bvh, path.with_suffix(".bvh"))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    for index in range(6):
        write_pair(tmp_path / "speakers" / f"s{index % 2}", f"take{index}", 3.0, index)
    return tmp_path


def test_a_folder_becomes_windows_split_by_recording(corpus: Path):
    data = BvhWavFolder(
        str(corpus), window=32, stride=8, batch_size=4, val_fraction=0.2, test_fraction=0.2
    )
    data.setup()
    names = {split: [r.name for r in data.recordings[split]] for split in ("train", "val", "test")}
    assert sorted(n for split in names.values() for n in split) == [f"take{i}" for i in range(6)]
    assert len(names["val"]) == len(names["test"]) == 1
    batch = next(iter(data.train_dataloader()))
    assert batch["rotations"].shape == (4, 32, 25, 6)
    assert batch["root"].shape == (4, 32, 3) and batch["speech"].shape == (4, 32, 33)
    assert batch["wave"].shape == (4, round(32 / FPS * RATE))
    train = data.datasets["train"]
    assert len(train) == 4 * len(range(0, 90 - 32 + 1, 8))  # 4 recordings of 90 frames
    assert len(data.datasets["val"]) == len(range(0, 90 - 32 + 1, 32))
    # A window's wave is the recording's speech from the window's first frame.
    item = train.__getitems__([3])
    recording = data.recordings["train"][int(item["recording"][0])]
    offset = round(int(item["start"][0]) / FPS * RATE)
    assert torch.equal(item["wave"][0], recording.wave[offset : offset + item["wave"].shape[1]])
    assert data.skeleton.parts == default_skeleton().parts


def test_splits_csv_decides_the_split_and_bad_rows_are_named(corpus: Path):
    rows = ["name,split"] + [
        f"speakers/s{i % 2}/take{i},{'test' if i == 5 else 'val' if i == 4 else 'train'}"
        for i in range(6)
    ]
    (corpus / "splits.csv").write_text("\n".join(rows) + "\n")
    data = BvhWavFolder(str(corpus), window=32)
    assert [b.stem for b, _ in data.pairs()["test"]] == ["take5"]
    (corpus / "splits.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValueError, match="splits.csv: no split for \\['speakers/s1/take5'\\]"):
        BvhWavFolder(str(corpus)).pairs()
    (corpus / "splits.csv").write_text("\n".join([*rows[:-1], "speakers/s1/take5,holdout"]) + "\n")
    with pytest.raises(ValueError, match="splits.csv row 7: split must be one of"):
        BvhWavFolder(str(corpus)).pairs()


def test_a_bvh_at_60_fps_is_resampled_to_30(tmp_path: Path):
    path = write_pair(tmp_path, "fast", 2.0, 0, fps=60)
    skeleton = default_skeleton()
    fast = read_bvh(path.with_suffix(".bvh"))
    recording = load_recording(
        path.with_suffix(".bvh"), path.with_suffix(".wav"), skeleton, RATE, FPS, 32
    )
    assert recording.num_frames == 60 and fast.num_frames == 120
    rotations, root = bvh_to_motion(fast)
    # Every second frame of the 60 fps motion is a 30 fps frame.
    np.testing.assert_allclose(
        rotation_6d_to_matrix(recording.rotations.double()), rotations[:120:2], atol=1e-5
    )
    np.testing.assert_allclose(recording.root.double(), root[:120:2], atol=1e-6)


def test_bad_inputs_end_in_one_clear_error(tmp_path: Path):
    skeleton = default_skeleton()
    path = write_pair(tmp_path, "take", 2.0, 0)
    bvh, wav = path.with_suffix(".bvh"), path.with_suffix(".wav")

    text = bvh.read_text()  # a joint without its rotation channels
    broken = tmp_path / "broken.bvh"
    broken.write_text(text.replace("CHANNELS 3 Zrotation Xrotation Yrotation", "CHANNELS 0", 1))
    with pytest.raises(BvhError, match="broken.bvh"):
        load_recording(broken, wav, skeleton, RATE, FPS, 32)

    soundfile.write(tmp_path / "quiet.wav", np.zeros(2 * RATE, np.float32), RATE)
    with pytest.raises(ValueError, match="quiet.wav: the speech is silent"):
        load_recording(bvh, tmp_path / "quiet.wav", skeleton, RATE, FPS, 32)

    soundfile.write(
        tmp_path / "long.wav", click_track(np.array([0.5]), 4.0).astype(np.float32), RATE
    )
    with pytest.raises(ValueError, match="lasts 2.00 s but .*long.wav 4.00 s"):
        load_recording(bvh, tmp_path / "long.wav", skeleton, RATE, FPS, 32)

    folder = BvhWavFolder(str(tmp_path), window=128, val_fraction=0.0, test_fraction=0.0)
    folder.skeleton = skeleton
    with pytest.raises(ValueError, match="take.wav: 60 frames .* shorter than one window of 128"):
        folder._load(bvh, wav)

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "solo.bvh").write_text(text)
    with pytest.raises(FileNotFoundError, match="solo.bvh has no solo.wav"):
        BvhWavFolder(str(lonely)).pairs()
    with pytest.raises(FileNotFoundError, match="not found"):
        BvhWavFolder(str(tmp_path / "nowhere")).pairs()


def test_parts_are_inferred_from_joint_names():
    skeleton = default_skeleton()
    inferred = infer_parts(skeleton)
    assert inferred.parts == skeleton.parts


def test_the_synthetic_corpus_is_served_as_windows(tiny_corpus):
    manifest, root = tiny_corpus
    data = SyntheticCoSpeech(
        cache_dir=str(root), voices=["en-us"], recording_seconds=8.0, max_prompts=30, batch_size=8
    )
    assert data.settings == TINY_CORPUS
    data.setup()
    assert sum(len(data.recordings[s]) for s in ("train", "val", "test")) == len(
        manifest["recordings"]
    )
    batch = next(iter(data.val_dataloader()))
    assert batch["rotations"].shape[1:] == (64, 25, 6) and batch["speech"].shape[-1] == 33
    starts = batch["start"][batch["recording"] == batch["recording"][0]]
    assert (starts.diff() == 64).all()  # validation windows back to back
