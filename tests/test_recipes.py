"""Every recipe runs one training and one validation batch (``--trainer.fast_dev_run``).

Each runs through the installed ``mmflow`` command, with the data cache and the classifier
pointed at test fixtures, and GPU recipes moved to the CPU with tiny batches.
"""

import copy
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from mmflow.fewstep.couplings import MANIFEST_NAME, CouplingSettings, shard_name
from mmflow.files import save_weights, write_json
from modalities.shape import MeshFolder, MosaicSettings, write_primitive_folder
from modalities.shape.mosaic_stats import write_statistics

from .mmflow.test_cli import ROOT, mmflow_command

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


#: Audio recipes read a small version of the LASS sources (shared with the source tests).
SMALL_AUDIO = {"max_clips_per_class": 10, "renders_per_program": 1, "render_seconds": 5.12}

#: Gesture recipes read the tiny co-speech corpus of the gesture tests.
SMALL_GESTURE = {"max_prompts": 30, "voices": "[en-us]", "recording_seconds": 8.0}


def build_module(spec: dict) -> nn.Module:
    """The untrained module a recipe's ``class_path`` / ``init_args`` entry describes."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(nn.Module, "module")
    return parser.instantiate(parser.parse_object({"module": copy.deepcopy(spec)}))["module"]


def untrained_network_folder(model: dict, folder: Path, classifier: Path) -> Path:
    """A pretrained folder (as ``mmflow export`` writes) of a recipe's network and adapter,
    the network untrained and the adapter's classifier the test's."""
    built = build_module(model["network"])
    save_weights(
        folder / "model.safetensors", {f"network.{k}": v for k, v in built.state_dict().items()}
    )
    adapter = copy.deepcopy(model["adapter"])
    if "classifier_path" in adapter.get("init_args", {}):
        adapter["init_args"]["classifier_path"] = str(classifier)
    write_json(folder / "config.json", {"network": model["network"], "adapter": adapter})
    return folder


def untrained_part_folder(model: dict, folder: Path) -> Path:
    """The folder of an untrained part built as the recipe that trains it builds it."""
    return build_module(model).save_pretrained(folder)


def recipe_writing(path: str) -> dict:
    """The model config of the recipe whose outputs hold ``path`` (a trained flow that another
    recipe starts from: its teacher, base flow or initial weights)."""
    for recipe in RECIPES:
        config = yaml.safe_load(recipe.read_text())
        root = config["trainer"].get("default_root_dir")
        if root and path.startswith(root.rstrip("/") + "/"):
            return config["model"]
    raise AssertionError(f"no recipe writes {path}: a recipe starts from a flow nobody trains")


def trained_flow_overrides(model_args: dict, tmp_path: Path, classifier: Path) -> list[str]:
    """Untrained stand-ins for the trained flows a recipe starts from: ``init_from``, an
    objective's ``teacher`` and a network's ``flow``, each built like the recipe that trains it."""
    sources = {
        "--model.init_from": model_args.get("init_from"),
        "--model.objective.init_args.teacher": model_args.get("objective", {})
        .get("init_args", {})
        .get("teacher"),
        "--model.network.init_args.flow": model_args["network"].get("init_args", {}).get("flow"),
    }
    args = []
    for index, (option, path) in enumerate(sources.items()):
        if isinstance(path, str):
            folder = tmp_path / f"trained{index}"
            untrained_network_folder(recipe_writing(path), folder, classifier)
            args.append(f"{option}={folder}")
    return args


def untrained_feature_weights(objective_args: dict, tmp_path: Path) -> Path:
    """The weights file of a distillation recipe's ``feature_network``, untrained: a stand-in
    for the feature classifier it names, built with the recipe's architecture."""
    file = tmp_path / "feature_network.safetensors"
    save_weights(file, build_module(objective_args["feature_network"]).state_dict())
    return file


def tiny_couplings(folder: Path, size: int = 8, num_classes: int = 10) -> Path:
    """A coupling folder of one shard of random 28 x 28 pairs with class labels."""
    settings = CouplingSettings("test", "euler", 1, 1.0, 0, 1, size, (1, 28, 28))
    write_json(folder / MANIFEST_NAME, asdict(settings))
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "x0": torch.randn(size, 1, 28, 28, generator=generator),
        "x1": torch.rand(size, 1, 28, 28, generator=generator) * 2 - 1,
        "cond/class_labels": torch.randint(0, num_classes, (size,), generator=generator),
    }
    save_weights(folder / shard_name(0), tensors)
    return folder


def one_class_of_primitives(folder: Path) -> Path:
    """Two primitives of each kind in one flat folder: one class, as the CGAL meshes are."""
    kinds = write_primitive_folder(folder.with_name(folder.name + "_by_kind"), per_kind=2)
    folder.mkdir()
    for mesh in kinds.rglob("*.obj"):
        (folder / f"{mesh.parent.name}_{mesh.name}").write_bytes(mesh.read_bytes())
    return folder


#: Mosaics fitted without refinement keep the recipes that fit them fast (0.2 s a shape).
FAST_MOSAIC = {"refine_steps": 0}


def mosaic_statistics(data: dict, root: Path, cache_dir: str, out: Path) -> Path:
    """The statistics a Mosaic-SDF recipe names, written by the statistics command from the
    test's shapes with the recipe's data settings (and :data:`FAST_MOSAIC`); the flow's run
    then reads the mosaics this fitted from the cache."""
    settings = {**data["init_args"], "root": str(root), "cache_dir": cache_dir}
    settings["mosaic"] = MosaicSettings(**{**settings["mosaic"], **FAST_MOSAIC})
    return write_statistics(MeshFolder(**settings), out)


def overrides(recipe: Path, tmp_path: Path, cache_dir: str, files: dict[str, Path]) -> list[str]:
    """Point data, classifiers and pretrained parts at test fixtures; GPU recipes to the CPU
    (a multi-GPU recipe to two CPU processes)."""
    config = yaml.safe_load(recipe.read_text())
    model = config["model"]
    is_flow = "class_path" not in model
    model_args = model if is_flow else model.get("init_args", {})
    prefix = "--model." if is_flow else "--model.init_args."
    audio = "audio" in config["data"]["class_path"]
    args = [
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    if config["data"]["class_path"].endswith("CaptionedWavFolder"):
        folder = files["wav_folder"]
        args += [
            f"--data.init_args.root={folder}",
            f"--data.init_args.captions_csv={folder / 'captions.csv'}",
        ]
    elif config["data"]["class_path"].endswith("CouplingDataModule"):
        args += [
            f"--data.init_args.couplings={tiny_couplings(tmp_path / 'couplings')}",
            f"--data.init_args.data.init_args.cache_dir={cache_dir}",
        ]
    elif config["data"]["class_path"].endswith("MeshFolder"):
        shapes = one_class_of_primitives(tmp_path / "shapes")
        args += [f"--data.init_args.root={shapes}", f"--data.init_args.cache_dir={cache_dir}"]
        if config["data"]["init_args"].get("mosaic"):
            args += [f"--data.init_args.mosaic.{key}={value}" for key, value in FAST_MOSAIC.items()]
    else:
        args.append(f"--data.init_args.cache_dir={cache_dir}")
    if config["data"]["class_path"].endswith("LASSMixtures"):
        args += [f"--data.init_args.{key}={value}" for key, value in SMALL_AUDIO.items()]
    if config["data"]["class_path"].endswith("SyntheticCoSpeech"):
        args += [f"--data.init_args.{key}={value}" for key, value in SMALL_GESTURE.items()]
    adapter_args = model_args.get("adapter", {}).get("init_args", {})
    if "statistics_path" in adapter_args:
        statistics = mosaic_statistics(config["data"], shapes, cache_dir, tmp_path / "stats.json")
        args.append(f"--model.adapter.init_args.statistics_path={statistics}")
    if "classifier_path" in adapter_args:
        classifier = files["audio_classifier" if audio else "image_classifier"]
        args.append(f"--model.adapter.init_args.classifier_path={classifier}")
    if "vae_path" in adapter_args and config["data"]["class_path"].endswith("MeshFolder"):
        vae = untrained_part_folder(recipe_writing(adapter_args["vae_path"]), tmp_path / "vae")
        args.append(f"--model.adapter.init_args.vae_path={vae}")
    elif "vae_path" in adapter_args:
        args.append(f"--model.adapter.init_args.vae_path={files['mel_vae']}")
    for key in ("autoencoder_path", "fgd_autoencoder_path"):
        if key in adapter_args:
            part = untrained_part_folder(recipe_writing(adapter_args[key]), tmp_path / key)
            args.append(f"--model.adapter.init_args.{key}={part}")
    if not is_flow and "classifier_path" in model_args:
        args.append(f"{prefix}classifier_path={files['audio_classifier']}")
    if is_flow:
        classifier = files["audio_classifier" if audio else "image_classifier"]
        args += trained_flow_overrides(model_args, tmp_path, classifier)
        objective_args = model_args.get("objective", {}).get("init_args", {})
        if "feature_weights" in objective_args:
            weights = untrained_feature_weights(objective_args, tmp_path)
            args.append(f"--model.objective.init_args.feature_weights={weights}")
    if not is_flow and "export_dir" in model_args:
        args.append(f"{prefix}export_dir={tmp_path / 'export'}")
    if adapter_args.get("fid_max_samples"):
        args.append("--model.adapter.init_args.fid_max_samples=4")
    if config["trainer"].get("accelerator") == "gpu":
        args += [
            "--trainer.accelerator=cpu",
            "--trainer.precision=32-true",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
        ]
        if config["data"]["class_path"].endswith("SyntheticCoSpeech"):
            args.append("--data.init_args.window=64")  # the tiny corpus has 4 s recordings
        if audio:
            # The CPU recipes' clip: half the tokens of a GPU recipe's 2.56 s, for its one step.
            args.append("--data.init_args.clip_seconds=1.28")
        if config["trainer"].get("strategy") == "ddp":
            args.append("--trainer.devices=2")  # two CPU processes (gloo)
        if is_flow:
            args.append("--model.nfe=2")
        if config["data"]["class_path"].endswith("MeshFolder"):
            args += ["--data.init_args.num_surface=1024", "--data.init_args.num_points=1024"]
            if "mesh_resolution" in adapter_args:
                args.append("--model.adapter.init_args.mesh_resolution=32")
    return args


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {
        "mnist.yaml",
        "fashion_mnist.yaml",
        "fashion_mnist_gpu.yaml",
        "mel_vae.yaml",
        "flowsep.yaml",
        "mask_baseline.yaml",
    }


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_recipe_fast_dev_run(
    recipe,
    tmp_path,
    cache_dir,
    trained_classifier,
    tiny_mel_vae,
    untrained_audio_classifier,
    example_wav_folder,
):
    files = {
        "image_classifier": trained_classifier[2],
        "audio_classifier": untrained_audio_classifier,
        "mel_vae": tiny_mel_vae,
        "wav_folder": example_wav_folder,
    }
    args = ["fit", "--config", str(recipe), *overrides(recipe, tmp_path, cache_dir, files)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        mmflow_command() + args, capture_output=True, text=True, cwd=tmp_path, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in result.stderr + result.stdout
