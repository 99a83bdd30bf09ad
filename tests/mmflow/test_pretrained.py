"""Pretrained parts: one folder format, loading through the class, and frozen holding."""

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmflow.pretrained import Frozen, PretrainedPart, TrainablePart


class TinyPart(PretrainedPart, nn.Module):
    """A part whose constructor arguments are JSON values, with dropout to show eval mode."""

    creation_hint = "create it with `make-tiny --out {path}`"

    def __init__(self, width: int = 3, scale: float = 2.0) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(0.5)

    def pretrained_init_args(self) -> dict:
        return {"width": self.width, "scale": self.scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.dropout(self.linear(x))


class Owner(nn.Module):
    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.trainable = nn.Linear(3, 3)
        self.encoder = Frozen(part)


def test_save_and_load_round_trip_frozen_with_info(tmp_path):
    part = TinyPart(width=4, scale=0.5)
    part.save_pretrained(tmp_path / "tiny", info={"val_accuracy": 0.93})
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["class"] == "TinyPart" and config["init_args"] == {"width": 4, "scale": 0.5}
    loaded = TinyPart.from_pretrained(tmp_path / "tiny")
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), part.eval()(x))
    assert loaded.pretrained_info == {"val_accuracy": 0.93}
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_missing_folder_names_it_and_the_command_that_creates_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*make-tiny --out .*nowhere"):
        TinyPart.from_pretrained(tmp_path / "nowhere")


def test_a_folder_of_another_class_is_refused(tmp_path):
    class OtherPart(TinyPart):
        pass

    OtherPart().save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="holds a `.*OtherPart`, not a `TinyPart`"):
        TinyPart.from_pretrained(tmp_path / "other")


def test_bad_config_and_mismatched_weights_name_the_file(tmp_path):
    TinyPart(width=3).save_pretrained(tmp_path / "part")
    config_path = tmp_path / "part" / "config.json"
    config = json.loads(config_path.read_text())
    config["init_args"]["width"] = 5
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model.safetensors: weights do not fit"):
        TinyPart.from_pretrained(tmp_path / "part")
    config["init_args"] = {"depth": 2}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: bad `init_args`"):
        TinyPart.from_pretrained(tmp_path / "part")
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        TinyPart.from_pretrained(tmp_path / "part")


def test_frozen_parts_are_not_parameters_nor_in_the_state_dict():
    owner = Owner(TinyPart())
    assert set(owner.state_dict()) == {"trainable.weight", "trainable.bias"}
    assert {name for name, _ in owner.named_parameters()} == {"trainable.weight", "trainable.bias"}
    fresh = Owner(TinyPart())
    fresh.load_state_dict(owner.state_dict(), strict=True)
    torch.testing.assert_close(fresh.trainable.weight, owner.trainable.weight)
    assert not torch.equal(fresh.encoder.linear.weight, owner.encoder.linear.weight)


def test_nested_owners_leave_frozen_parts_out_under_their_prefix():
    outer = nn.Module()
    outer.adapter = Owner(TinyPart())
    assert set(outer.state_dict()) == {"adapter.trainable.weight", "adapter.trainable.bias"}


def test_frozen_parts_stay_in_eval_mode_and_follow_the_owners_dtype():
    owner = Owner(TinyPart()).train()
    assert owner.training and owner.trainable.training
    assert not owner.encoder.part.training and not owner.encoder.part.dropout.training
    x = torch.randn(4, 3)
    torch.testing.assert_close(owner.encoder(x), owner.encoder(x))  # dropout is off
    owner.double()
    assert owner.encoder.linear.weight.dtype == torch.float64
    assert owner.encoder(x.double()).dtype == torch.float64


def test_attributes_and_calls_reach_the_part():
    part = TinyPart(scale=3.0)
    frozen = Frozen(part)
    assert frozen.part is part and frozen.scale == 3.0 and frozen.linear is part.linear
    x = torch.randn(2, 3)
    torch.testing.assert_close(frozen(x), part(x))
    with pytest.raises(AttributeError, match="nothing_here"):
        _ = frozen.nothing_here


def test_inputs_keep_their_gradients_through_a_frozen_part():
    frozen = Frozen(TinyPart())
    x = torch.randn(2, 3, requires_grad=True)
    frozen(x).sum().backward()
    assert x.grad is not None and frozen.linear.weight.grad is None


class LineFit(TrainablePart):
    """Fits ``y = a x`` to batches ``{"x", "y"}``: a trainable part as small as it gets."""

    progress_bar = ("error",)

    def __init__(self, lr: float = 0.1, export_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.slope = nn.Parameter(torch.zeros(()))

    def batch_losses(self, batch: dict) -> dict:
        error = (self.slope * batch["x"] - batch["y"]).square().mean()
        return {"loss": error, "error": error}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_a_trainable_part_logs_its_losses_and_saves_itself_at_the_end_of_fit(tmp_path):
    x = torch.linspace(-1, 1, 32)
    batches = DataLoader([{"x": x, "y": 3 * x}] * 200, batch_size=None)
    part = LineFit(lr=0.5, export_dir=str(tmp_path / "line"))
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(part, train_dataloaders=batches, val_dataloaders=batches)
    assert trainer.logged_metrics["val/error"] < 1e-6
    loaded = LineFit.from_pretrained(tmp_path / "line")
    assert loaded.slope.item() == pytest.approx(3.0, abs=1e-4)
    config = json.loads((tmp_path / "line" / "config.json").read_text())
    assert config["init_args"] == {"lr": 0.5}
