"""save_pretrained / from_pretrained and checkpoint conversion, on the toy modality."""

import json
import shutil

import pytest
import pytorch_lightning as pl
import torch

from mmflow.files import load_weights
from mmflow.hub import (
    from_pretrained,
    pretrained_from_checkpoint,
    save_pretrained,
    velocity_network,
)
from mmflow.training.cli import build_module

from .training.test_module import make_module
from .training.toy import ToyData

CONFIG = {
    "adapter": {"class_path": "tests.mmflow.training.toy.ToyAdapter"},
    "network": {"class_path": "tests.mmflow.training.toy.ToyVelocity", "init_args": {"width": 32}},
    "ema_decay": 0.9,
    "cfg_scale": 2.0,
    "nfe": 8,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pl.seed_everything(0)
    root = tmp_path_factory.mktemp("hub")
    module = build_module(CONFIG)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=20,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        default_root_dir=root,
    )
    trainer.fit(module, ToyData(size=512))
    return module, root


def _inputs():
    labels = torch.tensor([0, 1, 2, 3] * 4)
    return {"class_labels": labels}, torch.randn(16, 2, generator=torch.Generator().manual_seed(3))


def test_from_pretrained_reproduces_the_module_bit_for_bit(trained, tmp_path):
    module, _ = trained
    save_pretrained(module, tmp_path / "pretrained")
    flow = from_pretrained(tmp_path / "pretrained")
    cond, x0 = _inputs()
    expected, nfe = module.generate(cond, x0)
    result = flow.generate(cond, x0)
    assert torch.equal(result.samples, expected)
    assert result.nfe == nfe == 8
    assert flow.defaults.cfg_scale == 2.0
    # The equality is not vacuous: the trained network moves the noise.
    assert (result.samples - x0).abs().max() > 1e-2


def test_checkpoint_conversion_uses_the_ema_weights(trained):
    module, root = trained
    flow = pretrained_from_checkpoint(root / "ckpt" / "last.ckpt")
    cond, x0 = _inputs()
    assert torch.equal(flow.generate(cond, x0).samples, module.generate(cond, x0)[0])
    for ours, ema in zip(flow.network.parameters(), module.ema.module.parameters(), strict=True):
        assert torch.equal(ours, ema)


def test_files_are_safetensors_and_json(trained, tmp_path):
    module, _ = trained
    folder = save_pretrained(module, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    assert config["network"]["init_args"]["width"] == 32
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert config["generation"]["cfg_scale"] == 2.0 and config["generation"]["nfe"] == 8
    # The stored tensors are the sampling (EMA) network's weights, under "network.".
    weights = load_weights(folder / "model.safetensors")
    ema = module.ema.module.state_dict()
    assert {k for k in weights if k.startswith("network.")} == {f"network.{k}" for k in ema}
    for name, value in ema.items():
        assert torch.equal(weights[f"network.{name}"], value), name


def test_corrupt_weights_name_the_file(trained, tmp_path):
    module, _ = trained
    folder = save_pretrained(module, tmp_path / "p")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        from_pretrained(folder)


def test_shape_mismatch_between_config_and_weights_names_the_part(trained, tmp_path):
    module, _ = trained
    folder = save_pretrained(module, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    config["network"]["init_args"]["width"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="network.*size mismatch"):
        from_pretrained(folder)


def test_missing_config_key_names_the_key(tmp_path):
    tmp_path.joinpath("config.json").write_text(json.dumps({"network": {}}))
    with pytest.raises(ValueError, match="adapter"):
        from_pretrained(tmp_path)


def test_module_built_in_python_cannot_be_exported_silently(tmp_path):
    with pytest.raises(ValueError, match="recipe"):
        save_pretrained(make_module(), tmp_path)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="broken.ckpt"):
        pretrained_from_checkpoint(broken)


def test_velocity_network_takes_a_module_or_a_trained_flow_and_names_a_bad_source(tmp_path):
    module = torch.nn.Linear(2, 2)
    assert velocity_network(module) is module
    with pytest.raises(ValueError, match="`teacher` must be a module or a path, got a int"):
        velocity_network(3, "teacher")
    with pytest.raises(ValueError, match="`flow`: .*nowhere is neither a checkpoint file"):
        velocity_network(tmp_path / "nowhere", "flow")


def test_solver_options_travel_with_the_model_and_its_own_sampler_only(tmp_path):
    config = {
        **CONFIG,
        "sampler": "flowturbo",
        "nfe": 4,
        "solver_options": {"heun_steps": 1, "corrector_steps": 2},
    }
    module = build_module(config)
    save_pretrained(module, tmp_path / "p")
    flow = from_pretrained(tmp_path / "p")
    assert flow.defaults.solver_options == {"heun_steps": 1, "corrector_steps": 2}
    cond, x0 = _inputs()
    result = flow.generate(cond, x0)
    assert result.info["blocks"] == ["heun", "corrector", "corrector"]
    assert torch.equal(result.samples, module.generate(cond, x0)[0])
    assert flow.generate(cond, x0, sampler="heun", nfe=4).nfe == 4


def test_with_adapter_args_rebuilds_the_adapter_and_names_a_bad_setting(trained, tmp_path):
    module, _ = trained
    save_pretrained(module, tmp_path / "p")
    flow = from_pretrained(tmp_path / "p")
    changed = flow.with_adapter_args(num_classes=7)
    assert changed.adapter.num_classes == 7 and flow.adapter.num_classes == 3
    assert changed.network is flow.network
    assert changed.config["adapter"]["init_args"] == {"num_classes": 7}
    with pytest.raises(ValueError, match="`adapter`"):
        flow.with_adapter_args(no_such_setting=1)


@pytest.fixture
def importable_payload(tmp_path, monkeypatch):
    """A module on the import path whose import writes a marker file, as a payload would."""
    marker = tmp_path / "imported"
    (tmp_path / "payload_pkg.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom torch.nn import Linear as Thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


@pytest.mark.parametrize("where", ["network", "adapter", "network.init_args.inner"])
def test_a_class_outside_the_trusted_packages_is_refused_before_any_import(
    trained, tmp_path, importable_payload, where
):
    module, _ = trained
    folder = save_pretrained(module, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    if where == "network.init_args.inner":
        config["network"]["init_args"]["inner"] = {"class_path": "payload_pkg.Thing"}
    else:
        config[where]["class_path"] = "payload_pkg.Thing"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config.json: `{where}.class_path` names 'payload_pkg"):
        from_pretrained(folder)
    assert not importable_payload.exists()


def test_a_trusted_package_can_be_added(trained, tmp_path, importable_payload, monkeypatch):
    module, _ = trained
    folder = save_pretrained(module, tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    config["network"]["class_path"] = "payload_pkg.Thing"
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("MMFLOW_TRUSTED_PACKAGES", "somewhere, payload_pkg")
    with pytest.raises(ValueError, match="cannot build `network`"):
        from_pretrained(folder)  # imported (trusted), then the arguments do not fit a Linear
    assert importable_payload.exists()


def test_checkpoint_hyperparameters_naming_an_untrusted_class_are_refused(
    trained, tmp_path, importable_payload
):
    _, root = trained
    checkpoint = torch.load(root / "ckpt" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["adapter"] = {"class_path": "payload_pkg.Thing"}
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(ValueError, match="edited.ckpt: `adapter.class_path`"):
        pretrained_from_checkpoint(tmp_path / "edited.ckpt")
    assert not importable_payload.exists()


def _image_flow(classifier):
    config = {
        "adapter": {
            "class_path": "modalities.image.PixelAdapter",
            "init_args": {"num_classes": 10, "classifier_path": str(classifier)},
        },
        "network": {
            "class_path": "mmflow.nn.MMDiT",
            "init_args": {
                "tokenizer": {
                    "class_path": "mmflow.nn.Patchify2D",
                    "init_args": {"in_channels": 1, "patch_size": 7},
                },
                "hidden_size": 16,
                "depth": 1,
                "num_heads": 2,
                "num_classes": 10,
            },
        },
    }
    return build_module(config)


def test_an_export_holds_the_files_its_adapter_needs_and_works_after_they_move(
    trained_classifier, tmp_path
):
    _, _, classifier = trained_classifier
    own_copy = shutil.copytree(classifier, tmp_path / "classifier")
    folder = save_pretrained(_image_flow(own_copy), tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["files"] == {
        "adapter.init_args.classifier_path": "files/adapter.init_args.classifier_path"
    }
    shutil.rmtree(own_copy)
    moved = shutil.move(folder, tmp_path / "moved")
    flow = from_pretrained(moved)
    assert flow.config["adapter"]["init_args"]["classifier_path"].startswith(str(moved))
    assert "class_accuracy" in flow.adapter.evaluators()

    shutil.rmtree(tmp_path / "moved" / "files")
    with pytest.raises(FileNotFoundError, match="classifier_path` needs files/"):
        from_pretrained(moved)


def test_an_export_whose_file_setting_names_nothing_is_refused(trained_classifier, tmp_path):
    _, _, classifier = trained_classifier
    own_copy = shutil.copytree(classifier, tmp_path / "classifier")
    module = _image_flow(own_copy)
    shutil.rmtree(own_copy)
    with pytest.raises(FileNotFoundError, match="classifier_path`: .* does not exist"):
        save_pretrained(module, tmp_path / "export")
