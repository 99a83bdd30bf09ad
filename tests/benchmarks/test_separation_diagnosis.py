"""The separation diagnosis: per-class and per-SNR summaries, and its rows on a tiny FlowSep."""

import torch

from benchmarks.separation_diagnosis import diagnose, flow_rows, scores, summarise
from mmflow.training import FlowMatching
from modalities.audio.adapter import FlowSepAdapter
from tests.modalities.audio.test_adapter import make_batch, tiny_network, vae_path  # noqa: F401


def test_summaries_average_over_classes_and_snr_bins():
    values = {"si_sdri": torch.tensor([1.0, 3.0, 5.0, 7.0])}
    classes = torch.tensor([0, 0, 1, 1])
    snr = torch.tensor([-10.0, 0.0, 0.0, 15.0])
    summary = summarise(values, classes, snr, ["a", "b", "c"])["si_sdri"]
    assert summary == {
        "overall": 4.0,
        "class/a": 2.0,
        "class/b": 6.0,
        "snr/-15..-5": 1.0,
        "snr/-5..5": 4.0,
        "snr/5..15": 7.0,
    }


def test_the_mixture_improves_nothing_and_the_target_is_far_better():
    batch = make_batch()
    assert torch.allclose(scores(batch["mixture"], batch)["sdri"], torch.zeros(2).double())
    assert (scores(batch["target"], batch)["si_sdri"] > 50).all()


def test_the_data_estimate_at_t1_is_the_vae_reconstruction(vae_path):  # noqa: F811
    adapter = FlowSepAdapter(vae_path, class_names=["low", "high"])
    module = FlowMatching(adapter, tiny_network(adapter), sampler="euler", nfe=2, cfg_scale=2.0)
    batch = {**make_batch(), "snr_db": torch.tensor([0.0, 6.0])}
    rows = flow_rows(module.eval(), mean_of=2, times=(0.5, 1.0))
    assert {name: nfe for name, (_, nfe) in rows.items()} == {
        "sample": 4,
        "mean_of_2": 8,
        "data_estimate_t0.5": 2,
        "data_estimate_t1": 2,
    }
    results = diagnose(rows, [batch], ["low", "high"], seed=0)
    x1, cond = adapter.encode(batch)
    reconstruction = scores(adapter.decode(x1, cond, batch), batch)["si_sdri"].mean().item()
    assert results["data_estimate_t1"]["si_sdri"]["overall"] == reconstruction
    assert results["data_estimate_t0.5"]["si_sdri"]["overall"] != reconstruction
