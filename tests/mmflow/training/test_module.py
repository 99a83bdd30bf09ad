"""FlowMatching trained on class-conditional Gaussians, whose answer is known."""

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mmflow.training import FlowMatching

from .toy import CLASS_MEANS, ToyAdapter, ToyData, ToyVelocity


def make_module(**kwargs) -> FlowMatching:
    defaults = {
        "optimizer": lambda p: torch.optim.Adam(p, lr=3e-3),
        "ema_decay": 0.99,
        "sampler": "heun",
        "nfe": 16,
        "val_sample_batches": 16,
    }
    return FlowMatching(ToyAdapter(), ToyVelocity(), **{**defaults, **kwargs})


def make_trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pl.seed_everything(0)
    module = make_module()
    trainer = make_trainer(tmp_path_factory.mktemp("run"), max_epochs=25)
    trainer.fit(module, ToyData())
    return module, trainer


def test_class_conditional_samples_land_on_their_class_means(trained):
    module, _trainer = trained
    labels = torch.arange(3).repeat_interleave(200)
    x0 = torch.randn(600, 2, generator=torch.Generator().manual_seed(1))
    samples, nfe = module.generate({"class_labels": labels}, x0)
    assert nfe == 16
    for label, mean in enumerate(CLASS_MEANS):
        generated = samples[labels == label]
        assert (generated.mean(0) - mean).norm() < 0.25, (label, generated.mean(0))
        assert generated.std(0).max() < 0.6


def test_validation_updates_evaluators_and_writes_media(trained):
    module, trainer = trained
    metrics = trainer.validate(module, ToyData(), verbose=False)[0]
    assert metrics["val/mean_error"] < 0.25
    assert (
        sum(metrics[f"val/count/{k}"] for k in range(3)) == 16 * 128
    )  # dict metrics log per entry
    assert module.adapter.saved and module.adapter.saved[-1].endswith(".pt")


def test_test_loop_generates_and_scores_every_batch(trained):
    module, trainer = trained
    metrics = trainer.test(module, ToyData(), verbose=False)[0]
    assert metrics["test/mean_error"] < 0.25
    # every test batch is generated (validation stops at val_sample_batches)
    assert sum(metrics[f"test/count/{k}"] for k in range(3)) == 2048  # ToyData size


def test_predict_generates_under_each_examples_condition(trained):
    module, trainer = trained
    data = ToyData(size=300)
    predictions = torch.cat(trainer.predict(module, data))
    assert predictions.shape == (300, 2)
    for label, mean in enumerate(CLASS_MEANS):
        assert (predictions[data.labels == label].mean(0) - mean).norm() < 0.3


def test_ema_tracks_the_weights_with_its_decay(tmp_path):
    pl.seed_everything(0)
    module = make_module(ema_decay=0.9)
    snapshots = []

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            snapshots.append([p.detach().clone() for p in pl_module.network.parameters()])

    make_trainer(tmp_path, max_steps=5, callbacks=[Snapshot()], limit_val_batches=0).fit(
        module, ToyData()
    )
    expected = snapshots[0]
    for weights in snapshots[1:]:
        expected = [0.9 * e + 0.1 * w for e, w in zip(expected, weights)]
    for got, want in zip(module.ema.module.parameters(), expected):
        torch.testing.assert_close(got, want)
    assert module.sampling_network is module.ema.module


def test_the_scheduler_steps_every_optimizer_step(tmp_path):
    """Cosine decay over 6 steps: the learning rate each step trains with is the closed form
    ``lr_k = lr_0 (1 + cos(pi k / 6)) / 2``, so the schedule advances per step, not per epoch
    (ToyData holds several batches an epoch)."""
    learning_rates = []

    class Recorder(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            learning_rates.append(optimizer.param_groups[0]["lr"])

    module = make_module(
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6),
    )
    make_trainer(tmp_path, max_steps=6, callbacks=[Recorder()], limit_val_batches=0).fit(
        module, ToyData()
    )
    expected = [0.05 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert learning_rates == pytest.approx(expected)


def test_ema_copy_is_not_trainable():
    module = make_module()
    assert not any(p.requires_grad for p in module.ema.parameters())
    assert all(p.requires_grad for p in module.network.parameters())


def test_without_ema_samples_with_the_weights():
    module = make_module(ema_decay=None)
    assert module.ema is None and module.sampling_network is module.network


def test_condition_dropout_trains_the_null_class(tmp_path):
    seen = []

    class Recorder(ToyVelocity):
        def forward(self, x, t, class_labels):
            seen.append(class_labels.clone())
            return super().forward(x, t, class_labels)

    module = FlowMatching(ToyAdapter(), Recorder(), cond_dropout=0.5, ema_decay=None)
    make_trainer(tmp_path, max_steps=4, limit_val_batches=0).fit(module, ToyData(batch_size=256))
    labels = torch.cat(seen)
    assert 0.4 < (labels == 3).float().mean() < 0.6


@pytest.mark.parametrize("bad", [{"cond_dropout": 1.0}, {"ema_decay": 1.5}])
def test_bad_settings_raise(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_module(**bad)


class GaussianByOneStep(nn.Module):
    """``v(x, t) = mu + (s - 1) x``: one Euler step from ``x0 ~ N(0, I)`` gives
    ``x1 = mu + s x0 ~ N(mu, s^2 I)``, so the mean of ``K`` samples has variance ``s^2 / K``."""

    def __init__(self, mu: float = 2.0, s: float = 0.5) -> None:
        super().__init__()
        self.mu, self.s = mu, s
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        return self.mu + (self.s - 1.0) * x


@pytest.mark.parametrize("count", [1, 16])
def test_the_mean_of_samples_averages_independent_generations(count):
    module = FlowMatching(
        ToyAdapter(),
        GaussianByOneStep(),
        ema_decay=None,
        sampler="euler",
        nfe=1,
        mean_of_samples=count,
    )
    batch = {"point": torch.zeros(4096, 2), "label": torch.zeros(4096, dtype=torch.long)}
    media = module.predict_media(batch, torch.Generator().manual_seed(0))
    draws = torch.randn(count, 4096, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(media, 2.0 + 0.5 * draws.mean(dim=0))
    assert media.var().item() == pytest.approx(0.25 / count, rel=0.1)


def test_the_mean_of_samples_must_be_a_positive_count():
    with pytest.raises(ValueError, match="mean_of_samples"):
        FlowMatching(ToyAdapter(), ToyVelocity(), mean_of_samples=0)


def test_a_compiled_network_trains_like_the_eager_one(tmp_path):
    """``compile_network`` changes how the network runs, not what it computes: three steps
    from the same seed give the same weights under the same parameter names (checkpoints
    load either way), and the compiled module really ran compiled."""
    weights = []
    for compiled in (False, True):
        pl.seed_everything(0)
        module = make_module(compile_network=compiled)
        make_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, ToyData())
        weights.append(module.network.state_dict())
        assert (getattr(module.network, "_compiled_call_impl", None) is not None) == compiled
    eager, compiled = weights
    assert list(eager) == list(compiled)
    pl.seed_everything(0)
    initial = make_module().network.state_dict()
    assert any(not torch.equal(eager[name], initial[name]) for name in eager)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-5, rtol=1e-5)
