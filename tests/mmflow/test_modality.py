"""The per-sample condition dropout used for classifier-free guidance training."""

import pytest
import torch

from mmflow.modality import condition_rows, drop_conditions


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


def test_condition_rows_slices_every_per_example_entry_at_any_depth():
    cond = {
        "class_labels": torch.arange(5),
        "context": {"query": torch.arange(10.0).reshape(5, 2)},
        "names": ["a", "b", "c", "d", "e"],
        "guidance": None,
        "scale": 2.0,
    }
    rows = condition_rows(cond, 1, 3)
    assert rows["class_labels"].tolist() == [1, 2]
    assert rows["context"]["query"].tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert rows["names"] == ["b", "c"]
    assert rows["guidance"] is None and rows["scale"] == 2.0
    assert condition_rows(cond, 4, 9)["class_labels"].tolist() == [4]
