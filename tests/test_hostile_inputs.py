"""The hostile-input corpus: files a careless or malicious user could hand to ``mmflow``.

Each entry builds its file here, runs the command a user would (in this process, through
``mmflow.cli.main``), and requires: exit status 2, the last line of the error output naming
the file (or the key), no traceback, and no payload run (a marker file a payload would
create stays absent). The README counts the entries (``CORPUS``).
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from mmflow.cli import main
from mmflow.files import load_weights, save_weights, write_json

TOY_MODEL = {
    "adapter": {"class_path": "tests.mmflow.training.toy.ToyAdapter"},
    "network": {"class_path": "tests.mmflow.training.toy.ToyVelocity", "init_args": {"width": 8}},
}
TOY_DATA = {"class_path": "tests.mmflow.training.toy.ToyData", "init_args": {"size": 64}}


def recipe(tmp_path: Path, data: dict | None = None, **extra) -> Path:
    """A one-step toy recipe (its data replaced by ``data``), written to ``tmp_path``."""
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "limit_val_batches": 0,
            "default_root_dir": str(tmp_path / "run"),
        },
        "model": TOY_MODEL,
        "data": data or TOY_DATA,
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Payload:
    """Unpickling it creates ``marker``: what a malicious file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------- checkpoints and pickles


def _real_checkpoint(tmp_path: Path) -> Path:
    assert main(["fit", "--config", str(recipe(tmp_path))]) == 0
    return next((tmp_path / "run").rglob("*.ckpt"))


def truncated_checkpoint(tmp_path: Path) -> tuple[Path, list[str]]:
    source = _real_checkpoint(tmp_path)
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return bad, ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]


def random_bytes_checkpoint(tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / "random.ckpt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    return bad, ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]


def empty_checkpoint(tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / "empty.ckpt"
    bad.write_bytes(b"")
    return bad, ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]


def zip_pickle_payload(tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {}, "x": Payload(tmp_path / "marker")}, bad)
    return bad, ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]


def legacy_pickle_payload(tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / "legacy.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": {}, "x": Payload(tmp_path / "marker")}))
    return bad, ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]


def resume_from_payload(tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / "resume.ckpt"
    torch.save({"state_dict": {}, "x": Payload(tmp_path / "marker")}, bad)
    return bad, ["fit", "--config", str(recipe(tmp_path)), "--ckpt_path", str(bad)]


def checkpoint_that_is_a_list(tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], bad)
    return bad, ["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]


# ---------------------------------------------------------------- pretrained folders


def _exported(tmp_path: Path) -> Path:
    checkpoint = _real_checkpoint(tmp_path)
    folder = tmp_path / "export"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(folder)]) == 0
    return folder


def _edit_weights(tmp_path: Path, edit: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    folder = _exported(tmp_path)
    tensors = load_weights(folder / "model.safetensors")
    name = "network.inp.weight"
    tensors[name] = edit(tensors[name])
    save_weights(folder / "model.safetensors", tensors)
    return folder


def _sample_folder(tmp_path: Path, folder: Path) -> list[str]:
    return ["sample", "--pretrained", str(folder), "--out", str(tmp_path / "out")]


def safetensors_with_nan(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _edit_weights(tmp_path, lambda w: w.index_fill(0, torch.tensor([0]), float("nan")))
    return folder / "model.safetensors", _sample_folder(tmp_path, folder)


def safetensors_with_inf(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _edit_weights(tmp_path, lambda w: w.index_fill(0, torch.tensor([1]), float("inf")))
    return folder / "model.safetensors", _sample_folder(tmp_path, folder)


def safetensors_wrong_dtype(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _edit_weights(tmp_path, lambda w: w.round().to(torch.int64))
    return folder / "model.safetensors", _sample_folder(tmp_path, folder)


def safetensors_wrong_shape(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _edit_weights(tmp_path, lambda w: w[:, :2])
    return folder / "model.safetensors", _sample_folder(tmp_path, folder)


def safetensors_truncated(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _exported(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return weights, _sample_folder(tmp_path, folder)


def config_naming_an_untrusted_class(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _exported(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["network"]["class_path"] = "os.system"
    write_json(folder / "config.json", config)
    return folder / "config.json", _sample_folder(tmp_path, folder)


def config_not_json(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _exported(tmp_path)
    (folder / "config.json").write_text("{network: oops")
    return folder / "config.json", _sample_folder(tmp_path, folder)


def config_with_files_outside_the_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _exported(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["files"] = {"network.init_args.width": "../recipe.yaml"}
    write_json(folder / "config.json", config)
    return folder, _sample_folder(tmp_path, folder)


# ---------------------------------------------------------------- audio files and captions


def _audio_recipe(tmp_path: Path, csv_text: str) -> list[str]:
    (tmp_path / "captions.csv").write_bytes(csv_text.encode("latin-1"))
    data = {
        "class_path": "modalities.audio.CaptionedWavFolder",
        "init_args": {
            "root": str(tmp_path),
            "captions_csv": str(tmp_path / "captions.csv"),
            "clip_seconds": 0.5,
        },
    }
    return ["fit", "--config", str(recipe(tmp_path, data))]


def _good_wavs(tmp_path: Path, count: int = 4) -> list[str]:
    names = []
    for k in range(count):
        tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * k) * np.arange(8000) / 16000)
        soundfile.write(tmp_path / f"ok{k}.wav", tone.astype(np.float32), 16000)
        names.append(f"ok{k}.wav,a tone {k},tone")
    return names


def _wav_with(tmp_path: Path, name: str, samples: np.ndarray) -> tuple[Path, list[str]]:
    soundfile.write(tmp_path / name, samples, 16000, subtype="FLOAT")
    rows = ["file,caption,class", *_good_wavs(tmp_path), f"{name},a bad one,tone"]
    return tmp_path / name, _audio_recipe(tmp_path, "\n".join(rows) + "\n")


def wav_with_nan(tmp_path: Path) -> tuple[Path, list[str]]:
    samples = np.zeros(8000, dtype=np.float32)
    samples[100] = np.nan
    return _wav_with(tmp_path, "nan.wav", samples)


def wav_with_inf(tmp_path: Path) -> tuple[Path, list[str]]:
    samples = np.zeros(8000, dtype=np.float32)
    samples[5] = np.inf
    return _wav_with(tmp_path, "inf.wav", samples)


def wav_with_zero_frames(tmp_path: Path) -> tuple[Path, list[str]]:
    return _wav_with(tmp_path, "silent.wav", np.zeros(0, dtype=np.float32))


def wav_truncated(tmp_path: Path) -> tuple[Path, list[str]]:
    path, command = _wav_with(tmp_path, "cut.wav", np.zeros(8000, dtype=np.float32))
    path.write_bytes(path.read_bytes()[:2000])
    return path, command


def csv_empty(tmp_path: Path) -> tuple[Path, list[str]]:
    _good_wavs(tmp_path)
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "")


def csv_header_only(tmp_path: Path) -> tuple[Path, list[str]]:
    _good_wavs(tmp_path)
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "file,caption\n")


def csv_missing_column(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = ["path,caption", *(r.rsplit(",", 1)[0] for r in _good_wavs(tmp_path))]
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "\n".join(rows) + "\n")


def csv_row_with_an_extra_cell(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = ["file,caption,class", *_good_wavs(tmp_path)]
    rows[2] += ",surplus"
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "\n".join(rows) + "\n")


def csv_row_with_a_missing_cell(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = ["file,caption,class", *_good_wavs(tmp_path)]
    rows[3] = rows[3].rsplit(",", 1)[0]
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "\n".join(rows) + "\n")


def csv_conflicting_rows(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = ["file,caption,class", *_good_wavs(tmp_path), "ok0.wav,another caption,noise"]
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "\n".join(rows) + "\n")


def csv_bad_split(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = ["file,caption,split", *(f"{r.rsplit(',', 1)[0]},train" for r in _good_wavs(tmp_path))]
    rows[1] = rows[1].replace(",train", ",holdout")
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "\n".join(rows) + "\n")


def csv_not_utf8(tmp_path: Path) -> tuple[Path, list[str]]:
    rows = ["file,caption,class", *_good_wavs(tmp_path)]
    rows[1] = rows[1].replace("a tone", "a t\xf6ne")  # latin-1 bytes
    return tmp_path / "captions.csv", _audio_recipe(tmp_path, "\n".join(rows) + "\n")


# ---------------------------------------------------------------- recipes


def yaml_unknown_key(tmp_path: Path) -> tuple[str, list[str]]:
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace("max_steps:", "max_stepz:"))
    return "max_stepz", ["fit", "--config", str(path)]


def yaml_wrong_type(tmp_path: Path) -> tuple[str, list[str]]:
    path = recipe(tmp_path)
    path.write_text(path.read_text().replace("max_steps: 1", "max_steps: many"))
    return "max_steps", ["fit", "--config", str(path)]


def yaml_turning_off_weights_only(tmp_path: Path) -> tuple[str, list[str]]:
    bad = tmp_path / "payload.ckpt"
    torch.save({"x": Payload(tmp_path / "marker")}, bad)
    path = recipe(tmp_path, ckpt_path=str(bad), weights_only=False)
    return "weights_only", ["fit", "--config", str(path)]


def yaml_bad_class_option(tmp_path: Path) -> tuple[str, list[str]]:
    data = {**TOY_DATA, "init_args": {"size": 64, "batch_sise": 8}}
    return "batch_sise", ["fit", "--config", str(recipe(tmp_path, data))]


def yaml_not_yaml(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "broken.yaml"
    path.write_text("trainer: [unclosed\n  max_steps: : :\n")
    return path, ["fit", "--config", str(path)]


def yaml_unknown_class(tmp_path: Path) -> tuple[str, list[str]]:
    model = {**TOY_MODEL, "network": {"class_path": "nowhere.Network"}}
    path = recipe(tmp_path)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "model": model}))
    return "nowhere.Network", ["fit", "--config", str(path)]


def yaml_empty(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path, ["fit", "--config", str(path)]


# ---------------------------------------------------------------- meshes and images


def _mesh_recipe(tmp_path: Path) -> list[str]:
    data = {
        "class_path": "modalities.shape.MeshFolder",
        "init_args": {"root": str(tmp_path / "meshes"), "cache_dir": str(tmp_path / "cache")},
    }
    return ["fit", "--config", str(recipe(tmp_path, data))]


def _mesh_file(tmp_path: Path, name: str, content: bytes) -> tuple[Path, list[str]]:
    folder = tmp_path / "meshes"
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder / name, _mesh_recipe(tmp_path)


def mesh_empty(tmp_path: Path) -> tuple[Path, list[str]]:
    return _mesh_file(tmp_path, "empty.obj", b"")


def mesh_with_nan_vertices(tmp_path: Path) -> tuple[Path, list[str]]:
    text = "v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"
    return _mesh_file(tmp_path, "nan.obj", text.encode())


def mesh_not_a_mesh(tmp_path: Path) -> tuple[Path, list[str]]:
    return _mesh_file(tmp_path, "noise.stl", np.random.default_rng(1).bytes(3000))


def mesh_open_surface(tmp_path: Path) -> tuple[Path, list[str]]:
    text = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\n"
    return _mesh_file(tmp_path, "sheet.obj", text.encode())


def _image_recipe(tmp_path: Path) -> list[str]:
    data = {
        "class_path": "modalities.image.ImageFolder",
        "init_args": {
            "root": str(tmp_path / "images"),
            "image_size": 8,
            "cache_dir": str(tmp_path / "cache"),
        },
    }
    return ["fit", "--config", str(recipe(tmp_path, data))]


def _image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images" / "dots"
    folder.mkdir(parents=True)
    for k in range(4):
        Image.fromarray(np.full((8, 8), 40 * k, dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def image_truncated(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _image_folder(tmp_path)
    bad = folder / "2.png"
    bad.write_bytes(bad.read_bytes()[:30])
    return bad, _image_recipe(tmp_path)


def image_not_an_image(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = _image_folder(tmp_path)
    (folder / "5.png").write_bytes(struct.pack("<4I", 1, 2, 3, 4) * 16)
    return folder / "5.png", _image_recipe(tmp_path)


@dataclass(frozen=True)
class Entry:
    build: Callable[[Path], tuple[Path | str, list[str]]]

    def __str__(self) -> str:
        return self.build.__name__


CORPUS = [
    Entry(f)
    for f in (
        truncated_checkpoint,
        random_bytes_checkpoint,
        empty_checkpoint,
        zip_pickle_payload,
        legacy_pickle_payload,
        resume_from_payload,
        checkpoint_that_is_a_list,
        safetensors_with_nan,
        safetensors_with_inf,
        safetensors_wrong_dtype,
        safetensors_wrong_shape,
        safetensors_truncated,
        config_naming_an_untrusted_class,
        config_not_json,
        config_with_files_outside_the_folder,
        wav_with_nan,
        wav_with_inf,
        wav_with_zero_frames,
        wav_truncated,
        csv_empty,
        csv_header_only,
        csv_missing_column,
        csv_row_with_an_extra_cell,
        csv_row_with_a_missing_cell,
        csv_conflicting_rows,
        csv_bad_split,
        csv_not_utf8,
        yaml_unknown_key,
        yaml_wrong_type,
        yaml_turning_off_weights_only,
        yaml_bad_class_option,
        yaml_not_yaml,
        yaml_unknown_class,
        yaml_empty,
        mesh_empty,
        mesh_with_nan_vertices,
        mesh_not_a_mesh,
        mesh_open_surface,
        image_truncated,
        image_not_an_image,
    )
]


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # jsonargparse's own errors exit through the parser
        return int(stop.code or 0)


@pytest.mark.parametrize("entry", CORPUS, ids=str)
def test_hostile_input_ends_in_one_clear_error(entry, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named, argv = entry.build(tmp_path)
    capfd.readouterr()
    status = run_main(argv)
    err = capfd.readouterr().err
    assert status == 2, f"{entry}: exit status {status}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert str(named) in err and "error" in err, f"{entry}: no error naming {named}: {err[-1500:]}"
    assert not (tmp_path / "marker").exists(), f"{entry}: the payload ran"


def test_the_readme_counts_the_corpus():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"{len(CORPUS)} hostile inputs, {len(CORPUS)} clear errors" in readme
