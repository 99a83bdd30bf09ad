"""Fine-tuning: initial weights with a report, freezing by name, LoRA adapters and their merge."""

import pytest
import pytorch_lightning as pl
import torch

from mmflow.finetune import (
    LoRA,
    add_lora,
    freeze_parameters,
    has_lora,
    load_initial_weights,
    merge_lora,
    network_weights,
)
from mmflow.hub import from_pretrained, pretrained_from_checkpoint, save_pretrained
from mmflow.nn import MMDiT, Patchify2D, SetTokens
from mmflow.training import FlowMatching
from mmflow.training.cli import build_module

from .nn.helpers import randomize_
from .training.toy import ToyAdapter, ToyData


def mnist_sized_mmdit(num_classes: int = 10) -> MMDiT:
    """The MNIST demo recipe's network."""
    return MMDiT(Patchify2D(1, 4), hidden_size=128, depth=4, num_heads=4, num_classes=num_classes)


def image_inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    return x, torch.rand(batch, generator=generator), torch.arange(batch) % 10


def export_folder(network: torch.nn.Module, directory) -> None:
    """A pretrained folder as ``mmflow export`` writes it (weights under ``network.``)."""
    from mmflow.files import save_weights

    directory.mkdir(parents=True)
    save_weights(
        directory / "model.safetensors",
        {f"network.{k}": v for k, v in network.state_dict().items()},
    )


def test_initial_weights_from_a_folder_report_every_name(tmp_path):
    source = randomize_(mnist_sized_mmdit())
    export_folder(source, tmp_path / "pretrained")
    target = mnist_sized_mmdit(num_classes=5)
    report = load_initial_weights(target, tmp_path / "pretrained")
    assert report.reshaped == ["class_embed.table.weight (11, 128) -> (6, 128)"]
    assert not report.missing and not report.unexpected
    assert len(report.matched) == len(target.state_dict()) - 1
    for name in report.matched:
        torch.testing.assert_close(target.state_dict()[name], source.state_dict()[name])
    assert "1 reshaped" in report.summary() and "class_embed.table.weight" in report.summary()


def test_a_checkpoint_gives_its_ema_weights_and_bad_sources_are_named(tmp_path):
    state = {"ema.module.weight": torch.ones(2, 2), "network.weight": torch.zeros(2, 2)}
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    layer = torch.nn.Linear(2, 2)
    report = load_initial_weights(layer, tmp_path / "run.ckpt")
    assert report.matched == ["weight"] and report.missing == ["bias"]
    torch.testing.assert_close(layer.weight, torch.ones(2, 2))
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        network_weights(tmp_path / "nowhere.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt: not a readable checkpoint"):
        network_weights(tmp_path / "garbage.ckpt")
    torch.save({"state_dict": {"ema.module.other": torch.ones(3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt: none of its 1 network weights fits"):
        load_initial_weights(layer, tmp_path / "other.ckpt")


def test_freezing_by_pattern_and_a_pattern_that_matches_nothing():
    network = mnist_sized_mmdit()
    frozen = freeze_parameters(network, ["joint_blocks.0.*", "x_embed.*"])
    assert frozen and all(n.startswith(("joint_blocks.0.", "x_embed.")) for n in frozen)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable.isdisjoint(frozen) and "joint_blocks.1.layers.x.qkv.weight" in trainable
    with pytest.raises(ValueError, match="'joint_block.*' matches no parameter"):
        freeze_parameters(network, ["joint_block.*"])


def test_lora_trains_under_five_percent_and_starts_from_the_pretrained_function():
    network = randomize_(mnist_sized_mmdit())
    x, t, labels = image_inputs()
    before = network(x, t, class_labels=labels)
    add_lora(network, LoRA(rank=4, alpha=8, train_also=["class_embed.*"]))
    total = sum(p.numel() for p in network.parameters())
    trained = sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert trained / total < 0.05
    trainable = [n for n, p in network.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("class_embed.") for n in trainable)
    torch.testing.assert_close(network(x, t, class_labels=labels), before)  # B = 0 at the start
    assert has_lora(network)


def test_merged_lora_equals_the_adapted_network_and_has_plain_names():
    network = randomize_(mnist_sized_mmdit(), std=0.05)  # outputs of a trained model's size
    plain_names = set(network.state_dict())
    add_lora(network, LoRA(rank=4, alpha=8))
    for name, parameter in network.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    x, t, labels = image_inputs()
    merged = merge_lora(network)
    assert set(merged.state_dict()) == plain_names and not has_lora(merged)
    torch.testing.assert_close(
        merged(x, t, class_labels=labels), network(x, t, class_labels=labels), atol=1e-5, rtol=0
    )
    assert has_lora(network)  # the adapted network itself is left as it was


def test_bad_lora_settings_are_named():
    with pytest.raises(ValueError, match="rank"):
        add_lora(mnist_sized_mmdit(), LoRA(rank=0))
    with pytest.raises(ValueError, match="no_such_layer"):
        add_lora(mnist_sized_mmdit(), LoRA(targets=["no_such_layer"]))
    with pytest.raises(ValueError, match="'nothing.*' matches no parameter"):
        add_lora(mnist_sized_mmdit(), LoRA(train_also=["nothing.*"]))


class SetAdapter(ToyAdapter):
    """The toy points as a set of one token each, ``[B, 1, 2]``."""

    def encode(self, batch):
        return batch["point"][:, None], {"class_labels": batch["label"]}

    def decode(self, x1, cond, batch=None):
        return x1[:, 0]

    def sample_conditions(self, num_samples):
        return (num_samples, 1, 2), {"class_labels": torch.arange(num_samples) % 3}


SET_NETWORK = {
    "class_path": "mmflow.nn.MMDiT",
    "init_args": {
        "tokenizer": {"class_path": "mmflow.nn.SetTokens", "init_args": {"in_channels": 2}},
        "hidden_size": 32,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 3,
    },
}


def test_a_lora_run_exports_a_merged_model_with_the_same_outputs(tmp_path):
    pretrained = MMDiT(SetTokens(2), hidden_size=32, depth=2, num_heads=2, num_classes=3)
    randomize_(pretrained)
    export_folder(pretrained, tmp_path / "pretrained")
    pl.seed_everything(0)
    module = build_module(
        {
            "adapter": {"class_path": "tests.mmflow.test_finetune.SetAdapter"},
            "network": SET_NETWORK,
            "init_from": str(tmp_path / "pretrained"),
            "lora": {"rank": 2, "alpha": 4.0},
            "ema_decay": 0.9,
        }
    )
    assert len(module.initial_weights.matched) == len(pretrained.state_dict())
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=5,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
        default_root_dir=tmp_path,
    )
    frozen_before = module.network.get_parameter(
        "joint_blocks.0.layers.x.qkv.base_layer.weight"
    ).clone()
    trainer.fit(module, ToyData(batch_size=16))
    after = module.network.get_parameter("joint_blocks.0.layers.x.qkv.base_layer.weight")
    torch.testing.assert_close(after, frozen_before)  # base weights stay frozen
    x, t = torch.randn(6, 1, 2), torch.rand(6)
    labels = torch.arange(6) % 3
    adapted = module.sampling_network(x, t, class_labels=labels)
    for exported in (
        from_pretrained(save_pretrained(module, tmp_path / "from_module")),
        pretrained_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt"),
    ):
        assert not has_lora(exported.network)
        merged = exported.network(x, t, class_labels=labels)
        torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_frozen_parameters_do_not_reach_the_optimizer(tmp_path):
    network = MMDiT(SetTokens(2), hidden_size=32, depth=1, num_heads=2, num_classes=3)
    module = FlowMatching(SetAdapter(), network, freeze=["x_embed.*"], ema_decay=None)
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(network.x_embed.weight) not in optimised
    assert id(network.final.linear.weight) in optimised
