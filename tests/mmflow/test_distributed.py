"""``mmflow.distributed`` and what it makes possible: two CPU processes (DDP, gloo) validate
as one process does, and agree on their seeds."""

import csv
from types import SimpleNamespace

import torch

from mmflow.distributed import SeedPurpose, data_parallel_position, shared_seed

from .test_cli import run, write_recipe


def test_a_trainer_without_data_parallelism_is_process_zero_of_one():
    assert data_parallel_position(None) == (0, 1)
    single = SimpleNamespace(strategy=SimpleNamespace())  # no distributed_sampler_kwargs
    assert data_parallel_position(single) == (0, 1)
    share = {"rank": 3, "num_replicas": 4}
    ddp = SimpleNamespace(strategy=SimpleNamespace(distributed_sampler_kwargs=share))
    assert data_parallel_position(ddp) == (3, 4)


def test_shared_seeds_follow_the_recipe_seed_and_differ_by_purpose():
    torch.manual_seed(5)
    order, draws = (
        shared_seed(None, SeedPurpose.DATA_ORDER),
        shared_seed(None, SeedPurpose.TRAINING_DRAWS),
    )
    torch.rand(1000)  # what ran before does not matter
    assert shared_seed(None, SeedPurpose.DATA_ORDER) == order and order != draws
    torch.manual_seed(6)
    assert shared_seed(None, SeedPurpose.DATA_ORDER) != order


def _validation_metrics(root, *options):
    root.mkdir()
    recipe = write_recipe(root, max_steps=20)
    logger = [
        "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}/logs",
    ]
    run("fit", "--config", str(recipe), *logger, *options, timeout=300)
    (metrics,) = root.rglob("metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("val/loss")]
    return [{k: float(v) for k, v in row.items() if k.startswith("val/")} for row in rows]


def test_two_processes_validate_as_one_process_does(tmp_path):
    one = _validation_metrics(tmp_path / "one", "--data.init_args.batch_size=64")
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--data.init_args.batch_size=32"]
    two = _validation_metrics(tmp_path / "two", *ddp)
    assert len(one) == len(two) == 2  # steps 10 and 20
    assert {"val/loss", "val/mean_error", "val/count/0"} <= one[0].keys()
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
    assert sum(one[0][f"val/count/{k}"] for k in range(3)) == 64  # the evaluators' states summed
