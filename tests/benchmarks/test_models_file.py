"""The models file of the comparison benchmarks: entries back, every fault named."""

import pytest

from benchmarks.models_file import read_model_entries

ALLOWED, REQUIRED = {"name", "nfe", "cfg_scale"}, {"name", "nfe"}


def test_entries_come_back_as_written(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("- {name: a, nfe: 2}\n- {name: b, nfe: 4, cfg_scale: 2.0}\n")
    entries = read_model_entries(path, ALLOWED, REQUIRED)
    assert entries == [{"name": "a", "nfe": 2}, {"name": "b", "nfe": 4, "cfg_scale": 2.0}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]\n", "expected a non-empty list of models"),
        ("name: a\n", "expected a non-empty list of models"),
        ("- {name: a}\n", r"entry 0: unknown keys \[\], missing \['nfe'\]"),
        (
            "- {name: a, nfe: 1}\n- {name: b, nfe: 1, steps: 2}\n",
            r"entry 1: unknown keys \['steps'\]",
        ),
    ],
)
def test_a_bad_file_is_named(tmp_path, text, message):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"models.yaml: {message}"):
        read_model_entries(path, ALLOWED, REQUIRED)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.yaml: models file not found"):
        read_model_entries(tmp_path / "nothing.yaml", ALLOWED, REQUIRED)
