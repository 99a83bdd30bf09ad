"""``benchmarks.data_parallel``: two CPU processes (DDP, gloo) train as one process does on
the same global batch, EMA included, also when the run is stopped and resumed on one process."""

import pytest

from benchmarks.data_parallel import compare_processes, ddp_options

TOLERANCE = 1e-5  # float32 sums in another order; a wrong row or draw moves weights by ~1e-3


def test_two_processes_end_where_one_process_ends(tmp_path):
    record = compare_processes(
        tmp_path, processes=2, steps=24, global_batch=16, every=6, validate_every=12
    )
    assert record["switched"]["exit_status"] == 143
    assert 8 <= record["switched"]["stopped_at_step"] < 24
    for comparison in ("many_vs_one", "switched_vs_one"):
        parts = record[comparison]
        assert parts["global_steps"] == [24, 24]
        assert {"network", "ema", "optimizer"} <= parts.keys()
        for part in ("network", "ema", "optimizer"):
            assert parts[part]["max_abs"] < TOLERANCE, (comparison, parts[part])


def test_a_global_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="global batch of 15 does not split into 2"):
        ddp_options(2, 15)
