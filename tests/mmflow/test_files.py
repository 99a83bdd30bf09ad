"""Atomic writes, checksums and weight files shared by the core and the modalities."""

import hashlib

import pytest
import torch

from mmflow.files import (
    atomic_write,
    default_cache_dir,
    file_sha256,
    load_state,
    load_weights,
    read_json,
    reusable_manifest,
    save_weights,
    write_json,
)


def test_atomic_write_leaves_no_partial_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})

    def fail(temporary):
        temporary.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_checksum_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMFLOW_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_weights_round_trip_and_errors_name_the_file(tmp_path):
    layer = torch.nn.Linear(3, 2)
    save_weights(tmp_path / "w.safetensors", layer.state_dict())
    fresh = torch.nn.Linear(3, 2)
    load_state(fresh, load_weights(tmp_path / "w.safetensors"), tmp_path / "w.safetensors")
    assert torch.equal(fresh.weight, layer.weight)
    assert torch.equal(fresh.bias, layer.bias)
    loaded = load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["bias"], layer.bias)
    with pytest.raises(ValueError, match="w.safetensors.*size mismatch"):
        load_state(
            torch.nn.Linear(4, 2),
            load_weights(tmp_path / "w.safetensors"),
            tmp_path / "w.safetensors",
        )
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="none.safetensors"):
        load_weights(tmp_path / "none.safetensors")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_a_manifest_is_reused_only_with_the_same_settings_and_sources(tmp_path, caplog):
    path = tmp_path / "manifest.json"
    assert reusable_manifest(path, {"a": 1}, {"f": "00"}, "cache") is None  # none yet
    manifest = {"settings": {"a": 1}, "sources": {"f": "00"}, "files": ["x"]}
    write_json(path, manifest)
    assert reusable_manifest(path, {"a": 1}, {"f": "00"}, "cache") == manifest
    with caplog.at_level("WARNING"):
        assert reusable_manifest(path, {"a": 2}, {"f": "00"}, "cache") is None
        assert reusable_manifest(path, {"a": 1}, {"f": "11"}, "cache") is None
        path.write_text("{not json")
        assert reusable_manifest(path, {"a": 1}, {"f": "00"}, "cache") is None
    assert caplog.text.count("cache: settings or source checksums differ") == 3
