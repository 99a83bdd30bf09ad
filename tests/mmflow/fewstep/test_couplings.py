"""Couplings: a teacher with a closed-form flow writes exact triples, a killed run resumes with
no duplicate or missing shard, bad folders are refused by name, and reflow on the couplings
straightens the toy flow."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mmflow.fewstep.couplings import (
    CouplingDataModule,
    Couplings,
    coupling_parts,
    shard_name,
    write_couplings,
)
from mmflow.fewstep.straightness import straightness
from mmflow.files import load_weights, save_weights
from mmflow.hub import PretrainedFlow
from mmflow.timesteps import Uniform
from mmflow.training import FlowMatching, FlowMatchingObjective

from ..training.test_module import make_trainer
from ..training.toy import CLASS_MEANS, CLASS_STD, ToyAdapter, ToyData, ToyVelocity

REPOSITORY = Path(__file__).resolve().parents[3]


class ExactToyVelocity(nn.Module):
    """The exact velocity of the linear path to ``N(CLASS_MEANS[y], CLASS_STD^2 I)`` (the
    Gaussian flow of :mod:`mmflow.sampling.analytic`, one mean per class); its flow sends noise
    ``x0`` to ``CLASS_MEANS[y] + CLASS_STD x0``. The null class gets the mean of the means."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.register_buffer("means", torch.cat([CLASS_MEANS, CLASS_MEANS.mean(0, keepdim=True)]))

    def forward(self, x, t, class_labels):
        if self.delay:
            time.sleep(self.delay)
        mean, t = self.means[class_labels], t[:, None]
        variance = t**2 * CLASS_STD**2 + (1 - t) ** 2
        return mean + (t * CLASS_STD**2 - (1 - t)) / variance * (x - t * mean)


class ToyExamples(torch.utils.data.Dataset):
    """The toy training split with the ``__getitems__`` dict batches couplings read."""

    def __init__(self, size: int = 64) -> None:
        data = ToyData(size=size)
        self.points, self.labels = data.points, data.labels

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, rows):
        return {"point": self.points[rows], "label": self.labels[rows]}


def teacher(delay: float = 0.0) -> PretrainedFlow:
    return PretrainedFlow(ExactToyVelocity(delay), ToyAdapter())


def write(folder, num_samples=32, shard_size=8, **kwargs):
    settings = {"sampler": "rk4", "nfe": 64, "seed": 3, "batch_size": 4}
    return write_couplings(
        teacher(),
        "exact-toy",
        ToyExamples(),
        folder,
        num_samples,
        shard_size,
        **{**settings, **kwargs},
    )


def test_the_triples_follow_the_teacher_flow_and_the_data_conditions(tmp_path):
    assert write(tmp_path) == [0, 1, 2, 3]
    triples = Couplings(tmp_path)
    batch = triples.__getitems__(list(range(32)))
    labels = batch["cond"]["class_labels"]
    torch.testing.assert_close(labels, ToyExamples().labels[:32])
    exact = CLASS_MEANS[labels] + CLASS_STD * batch["x0"]
    torch.testing.assert_close(batch["x1"], exact, atol=1e-5, rtol=0)
    assert batch["x0"].std() > 0.5 and len(torch.unique(batch["x0"][:, 0])) == 32
    assert write(tmp_path) == []


def test_independent_processes_split_the_shards_and_make_the_same_set(tmp_path):
    assert write(tmp_path / "split", process_index=1, num_processes=2) == [1, 3]
    assert write(tmp_path / "split", process_index=0, num_processes=2) == [0, 2]
    write(tmp_path / "whole")
    for index in range(4):
        split = load_weights(tmp_path / "split" / shard_name(index))
        whole = load_weights(tmp_path / "whole" / shard_name(index))
        assert split.keys() == whole.keys()
        for key in whole:
            torch.testing.assert_close(split[key], whole[key], rtol=0, atol=0)


WRITER = textwrap.dedent(
    """
    import sys
    from tests.mmflow.fewstep.test_couplings import ToyExamples, teacher
    from mmflow.fewstep.couplings import write_couplings
    write_couplings(teacher(delay=0.02), "exact-toy", ToyExamples(), sys.argv[1], 80, 8,
                    sampler="rk4", nfe=16, seed=3, batch_size=4)
    """
)


def test_a_killed_run_resumes_with_no_duplicate_or_missing_shard(tmp_path):
    folder = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=REPOSITORY)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("shard-*.safetensors"))) < 2:
        assert process.poll() is None, "the writer ended before it could be killed"
        assert time.monotonic() < deadline, "the writer wrote no shard in 120 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    assert 2 <= len(done_before) < 10, done_before
    with pytest.raises(ValueError, match="shards missing"):
        Couplings(folder)
    written_now = write_couplings(
        teacher(),
        "exact-toy",
        ToyExamples(),
        folder,
        80,
        8,
        sampler="rk4",
        nfe=16,
        seed=3,
        batch_size=4,
    )
    assert sorted(shard_name(i) for i in written_now) == sorted(
        {shard_name(i) for i in range(10)} - set(done_before)
    )
    assert sorted(p.name for p in folder.glob("shard-*.safetensors")) == [
        shard_name(i) for i in range(10)
    ]
    reference = tmp_path / "uninterrupted"
    write_couplings(
        teacher(),
        "exact-toy",
        ToyExamples(),
        reference,
        80,
        8,
        sampler="rk4",
        nfe=16,
        seed=3,
        batch_size=4,
    )
    resumed, whole = Couplings(folder).tensors, Couplings(reference).tensors
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)


def test_a_resumed_run_with_other_settings_is_refused(tmp_path):
    write(tmp_path)
    with pytest.raises(ValueError, match=r"manifest.json.*nfe: 64 there, 8 now"):
        write(tmp_path, nfe=8)


def test_asking_for_more_samples_extends_the_set_and_fewer_is_refused(tmp_path):
    write(tmp_path / "grown", num_samples=16)
    first = {i: load_weights(tmp_path / "grown" / shard_name(i)) for i in range(2)}
    assert write(tmp_path / "grown", num_samples=32) == [2, 3]
    write(tmp_path / "whole")
    grown, whole = Couplings(tmp_path / "grown").tensors, Couplings(tmp_path / "whole").tensors
    for key in whole:
        torch.testing.assert_close(grown[key], whole[key], rtol=0, atol=0)
    for index, tensors in first.items():
        for key, value in load_weights(tmp_path / "grown" / shard_name(index)).items():
            torch.testing.assert_close(value, tensors[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"manifest.json.*num_shards: 4 there, 2 now"):
        write(tmp_path / "grown", num_samples=16)
    with pytest.raises(ValueError, match=r"nfe: 64 there, 8 now"):
        write(tmp_path / "grown", num_samples=64, nfe=8)


def test_bad_shards_are_named(tmp_path):
    write(tmp_path)
    shard = tmp_path / shard_name(2)
    tensors = load_weights(shard)
    save_weights(shard, {**tensors, "x1": tensors["x1"].clone().fill_(float("nan"))})
    with pytest.raises(ValueError, match=r"shard-000002.safetensors: `x1` holds non-finite"):
        Couplings(tmp_path)
    save_weights(shard, {**tensors, "x0": tensors["x0"][:, :1]})
    with pytest.raises(ValueError, match=r"shard-000002.safetensors: `x0` should be \(8, 2\)"):
        Couplings(tmp_path)
    shard.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="shard-000002.safetensors: not a readable"):
        Couplings(tmp_path)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="multiple of `shard_size`"):
        write(tmp_path, num_samples=30)
    with pytest.raises(ValueError, match="process_index"):
        write(tmp_path, process_index=2, num_processes=2)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Couplings(tmp_path / "nowhere")


def test_coupling_batches_pass_the_adapter_and_modality_batches_do_not():
    coupling = {"x0": torch.zeros(2, 2), "x1": torch.ones(2, 2), "cond": {"class_labels": None}}
    assert coupling_parts(coupling)[0] is coupling["x1"]
    assert coupling_parts({"point": torch.zeros(2, 2), "label": torch.zeros(2)}) is None


def test_reflow_on_the_couplings_straightens_the_toy_flow(tmp_path):
    """2-rectified flow: the toy teacher's trajectories bend (class std 0.3 against unit noise),
    the flow trained on its couplings with the stored noise is near straight, and one Euler
    step of it lands near the teacher's sample where one step of the teacher does not."""
    write(tmp_path, num_samples=2048, shard_size=512, batch_size=512, nfe=8)
    pl.seed_everything(0)
    module = FlowMatching(
        ToyAdapter(),
        ToyVelocity(),
        objective=FlowMatchingObjective(noise_key="x0"),
        time_distribution=Uniform(),
        cond_dropout=0.0,
        ema_decay=None,
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
    )
    data = CouplingDataModule(str(tmp_path), ToyData(size=256), batch_size=256)
    make_trainer(tmp_path, max_steps=800, limit_val_batches=0).fit(module, data)
    pairs = Couplings(tmp_path).__getitems__(list(range(512)))
    cond, x0 = pairs["cond"], pairs["x0"]
    zeros = torch.zeros(len(x0))
    exact = ExactToyVelocity()
    with torch.no_grad():
        student_error = (x0 + module.network(x0, zeros, **cond) - pairs["x1"]).norm(dim=1).mean()
        teacher_error = (x0 + exact(x0, zeros, **cond) - pairs["x1"]).norm(dim=1).mean()
    print(f"one-step error: teacher {teacher_error:.3f}, reflowed {student_error:.3f}")
    assert teacher_error > 0.3 and student_error < 0.25 * teacher_error
    teacher_straightness = straightness(exact, x0, nfe=32, **cond)
    student_straightness = straightness(module.network, x0, nfe=32, **cond)
    print(f"straightness: teacher {teacher_straightness:.4f}, reflowed {student_straightness:.4f}")
    assert student_straightness < 0.25 * teacher_straightness
