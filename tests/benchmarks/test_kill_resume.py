"""``benchmarks.kill_resume``: a run killed with SIGKILL and resumed ends bit for bit as an
uninterrupted one (a few kills here; the benchmark makes 20)."""

import torch

from benchmarks.kill_resume import compare_final, kill_and_resume


def test_a_run_killed_twice_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    record = kill_and_resume(tmp_path, kills=2, steps=150, every=7, validate_every=50, seed=1)
    assert record["kills"] >= 1, record["events"]
    assert record["identical"], record["differing"]
    assert record["tensors_compared"] > 20


def test_the_comparison_names_the_first_tensor_that_differs(tmp_path):
    a = {"global_step": 3, "state_dict": {"w": torch.zeros(2)}, "optimizer_states": [{}]}
    b = {"global_step": 3, "state_dict": {"w": torch.ones(2)}, "optimizer_states": [{}]}
    torch.save(a, tmp_path / "a.ckpt")
    torch.save(b, tmp_path / "b.ckpt")
    result = compare_final(tmp_path / "a.ckpt", tmp_path / "b.ckpt")
    assert not result["identical"] and result["differing"] == ["state_dict/w"]
