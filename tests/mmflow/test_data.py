"""The training loader every datamodule uses: a new order each epoch, split among processes,
resumable mid-epoch."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from mmflow.data import EpochShuffle, ResumableLoader


def _indices(loader: ResumableLoader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def _process(rank: int, world_size: int) -> SimpleNamespace:
    """What the loader reads of a trainer: its place among ``world_size`` processes."""
    share = {"rank": rank, "num_replicas": world_size}
    return SimpleNamespace(
        world_size=world_size, strategy=SimpleNamespace(distributed_sampler_kwargs=share)
    )


def _loader(
    size: int = 20, batch_size: int = 4, seed: int | None = 7, rank: int = 0, world_size: int = 1
) -> ResumableLoader:
    trainer = _process(rank, world_size)
    return ResumableLoader(
        TensorDataset(torch.arange(size)), batch_size, seed=seed, trainer=trainer
    )


def _batches(loader: ResumableLoader) -> list[list[int]]:
    return [batch.tolist() for (batch,) in loader]


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


def test_the_seed_follows_the_recipe_seed_not_the_random_stream_before_it():
    torch.manual_seed(0)
    a = EpochShuffle(10).seed
    torch.manual_seed(0)
    torch.rand(100)  # e.g. a network initialised first
    assert EpochShuffle(10).seed == a
    torch.manual_seed(1)
    assert EpochShuffle(10).seed != a


def test_a_loader_resumed_mid_epoch_serves_the_rest_of_that_epoch_then_the_next():
    loader = _loader()
    loader.sampler.set_epoch(2)
    epoch_two = _indices(loader)
    loader.sampler.set_epoch(3)
    epoch_three = _indices(loader)
    loader.track(consumed=2, epoch_batches=5)
    loader.sampler.set_epoch(2)
    state = loader.state_dict()
    assert state == {"seed": 7, "epoch": 2, "consumed": 2, "batch_size": 4, "world_size": 1}

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


@pytest.mark.parametrize("size", [24, 23])
def test_processes_together_see_the_global_batches_of_one_process(size):
    one = _batches(_loader(size, batch_size=6))
    shares = [_batches(_loader(size, batch_size=2, rank=r, world_size=3)) for r in range(3)]
    assert len(one) == 4 - (size % 6 > 0)  # full batches only
    assert all(len(share) == len(one) for share in shares)
    for k, batch in enumerate(one):
        together = [share[k][j] for j in range(2) for share in shares]  # row j of each process
        assert together == batch
    seen = [i for share in shares for batch in share for i in batch]
    assert len(set(seen)) == len(seen) == 6 * len(one)


def test_a_training_split_smaller_than_one_batch_is_one_short_batch_an_epoch():
    shares = [_batches(_loader(7, batch_size=4, rank=r, world_size=2)) for r in range(2)]
    assert [len(share) for share in shares] == [1, 1]
    (one,) = _batches(_loader(7, batch_size=8))
    assert len(one) == 7
    together = [row for pair in zip(shares[0][0], shares[1][0]) for row in pair]
    assert together == one[:6]  # the order cut to a multiple of 2 processes


def test_a_run_resumes_on_another_number_of_processes_with_the_same_global_batch():
    single = _loader(24, batch_size=4)
    single.sampler.set_epoch(1)
    epoch = _batches(single)
    single.track(consumed=2, epoch_batches=6)
    state = single.state_dict()
    halves = [_loader(24, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    for half in halves:
        half.load_state_dict(state)
    rest = [_batches(half) for half in halves]
    assert [[a for pair in zip(x, y) for a in pair] for x, y in zip(*rest)] == epoch[2:]


def test_a_resume_that_changes_the_global_batch_is_refused():
    loader = _loader(24, batch_size=4)
    loader.track(consumed=1, epoch_batches=6)
    with pytest.raises(
        ValueError, match=r"data.batch_size: .* of 4 \(4 x 1 processes\), this one 8 \(4 x 2\)"
    ):
        _loader(24, batch_size=4, rank=0, world_size=2).load_state_dict(loader.state_dict())
