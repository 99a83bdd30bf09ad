"""The training loader every datamodule uses: a new order each epoch, resumable mid-epoch."""

import torch
from torch.utils.data import TensorDataset

from mmflow.data import EpochShuffle, ResumableLoader


def _indices(loader: ResumableLoader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def _loader(size: int = 20, batch_size: int = 4, seed: int | None = 7) -> ResumableLoader:
    return ResumableLoader(TensorDataset(torch.arange(size)), batch_size, seed=seed)


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch_alone():
    sampler = EpochShuffle(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    torch.manual_seed(123)  # the global generator plays no part
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(10)) and second != first
    assert list(EpochShuffle(10, seed=4)) != first


def test_the_seed_is_drawn_from_the_global_generator_once():
    torch.manual_seed(0)
    a = EpochShuffle(10).seed
    torch.manual_seed(0)
    assert EpochShuffle(10).seed == a


def test_a_loader_resumed_mid_epoch_serves_the_rest_of_that_epoch_then_the_next():
    loader = _loader()
    loader.sampler.set_epoch(2)
    epoch_two = _indices(loader)
    loader.sampler.set_epoch(3)
    epoch_three = _indices(loader)
    loader.track(consumed=2, epoch_batches=5)
    loader.sampler.set_epoch(2)
    state = loader.state_dict()
    assert state == {"seed": 7, "epoch": 2, "consumed": 2, "batch_size": 4}

    resumed = _loader(seed=99)
    resumed.load_state_dict(state)
    assert _indices(resumed) == epoch_two[8:]
    resumed.sampler.set_epoch(3)
    assert _indices(resumed) == epoch_three


def test_a_loader_saved_at_the_end_of_an_epoch_resumes_with_the_next_epoch():
    loader = _loader()
    loader.sampler.set_epoch(4)
    loader.track(consumed=3, epoch_batches=3)  # a trainer that takes 3 batches an epoch
    resumed = _loader(seed=0)
    resumed.load_state_dict(loader.state_dict())
    loader.sampler.set_epoch(5)
    assert _indices(resumed) == _indices(loader)
