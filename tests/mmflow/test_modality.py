"""The per-sample condition dropout used for classifier-free guidance training."""

import pytest
import torch

from mmflow.modality import ModalityAdapter, drop_conditions


def test_dropped_samples_take_the_null_condition_elementwise():
    cond = {
        "class_labels": torch.tensor([1, 2, 3]),
        "context": {"text": torch.ones(3, 2, 4)},
        "flag": None,
    }
    null = {
        "class_labels": torch.tensor([9, 9, 9]),
        "context": {"text": torch.zeros(3, 2, 4)},
        "flag": None,
    }
    mixed = drop_conditions(cond, null, torch.tensor([True, False, True]))
    assert mixed["class_labels"].tolist() == [9, 2, 9]
    assert mixed["context"]["text"][:, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert mixed["flag"] is None


def test_keys_missing_from_the_null_condition_are_kept():
    cond = {"class_labels": torch.tensor([1, 2]), "mixture": torch.ones(2, 3)}
    mixed = drop_conditions(
        cond, {"class_labels": torch.tensor([0, 0])}, torch.tensor([True, True])
    )
    torch.testing.assert_close(mixed["mixture"], torch.ones(2, 3))


def test_shape_change_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="class_labels"):
        drop_conditions(
            {"class_labels": torch.zeros(2)},
            {"class_labels": torch.zeros(3)},
            torch.tensor([True, False]),
        )


class _AdapterWithFrozenParts(ModalityAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.trainable = torch.nn.Linear(2, 2)
        self.add_frozen(
            "encoder", torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
        )


def test_frozen_parts_stay_out_of_the_state_dict_and_load_back():
    adapter = _AdapterWithFrozenParts()
    state = adapter.state_dict()
    assert set(state) == {"trainable.weight", "trainable.bias"}
    assert not any(p.requires_grad for p in adapter.encoder.parameters())
    other = _AdapterWithFrozenParts()
    other.load_state_dict(state, strict=True)
    torch.testing.assert_close(other.trainable.weight, adapter.trainable.weight)
    # the frozen part keeps its own weights, not the other adapter's
    assert not torch.equal(other.encoder[0].weight, adapter.encoder[0].weight)


def test_a_state_dict_that_holds_frozen_weights_still_loads_strictly():
    adapter = _AdapterWithFrozenParts()
    state = dict(adapter.state_dict())
    state.update({f"encoder.{k}": v for k, v in adapter.encoder.state_dict().items()})
    other = _AdapterWithFrozenParts()
    other.load_state_dict(state, strict=True)
    torch.testing.assert_close(other.encoder[0].weight, adapter.encoder[0].weight)


def test_nested_frozen_parts_are_dropped_under_their_prefix():
    outer = torch.nn.Module()
    outer.adapter = _AdapterWithFrozenParts()
    assert set(outer.state_dict()) == {"adapter.trainable.weight", "adapter.trainable.bias"}
    fresh = torch.nn.Module()
    fresh.adapter = _AdapterWithFrozenParts()
    fresh.load_state_dict(outer.state_dict(), strict=True)


def test_frozen_parts_stay_in_eval_mode_when_the_adapter_trains():
    adapter = _AdapterWithFrozenParts().train()
    assert adapter.training and adapter.trainable.training
    assert not adapter.encoder.training and not adapter.encoder[1].training
