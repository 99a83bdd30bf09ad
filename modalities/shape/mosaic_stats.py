"""The per-channel statistics of the training mosaics, which :class:`MosaicAdapter` reads.

The flow trains on standardised mosaic sets (:class:`modalities.shape.mosaic.MosaicNormaliser`:
``(x - mean) / std`` per channel of ``(p, s, vec V)``). The adapter is built before the data, so
the statistics are computed once beforehand, from the training split only, and written as
JSON; the recipe names the file (``recipes/shape/mosaic_flow.yaml``)::

    python -m modalities.shape.mosaic_stats --root .cache/data/cgal-meshes \\
        --skip_invalid true --duplicate_tolerance 0.01 --seed 0 \\
        --val_fraction 0.1 --test_fraction 0.1 \\
        --mosaic.num_grids 64 --mosaic.grid_size 5 --mosaic.refine_steps 200 \\
        --out outputs/shape/mosaic_flow/statistics.json

The options are :class:`modalities.shape.MeshFolder`'s (the names of a recipe's
``data.init_args``; ``--mosaic.*`` are the :class:`MosaicSettings`, their defaults when
omitted), so the split is the recipe's when the values are. Setting the folder up fits every
shape's mosaic (all splits: training reads them all) into the cache, where training finds
them; the statistics take the training shapes' grids only. The JSON holds ``mean`` and
``std`` (``4 + k^3`` each) with the settings, the split's options and the training files.

On the 97 closed CGAL meshes with the defaults (64 grids of 5^3, 200 refinement steps) and
the split above, the first run fitted 97 mosaics (8.0 s a mesh on average, 5 to 17 s) and
took 13 minutes (783 s) with ``OMP_NUM_THREADS=1`` on this 2-core machine beside other jobs;
its statistics come from the 72 training shapes. A second run reads the cache and takes 12 s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from jsonargparse import ArgumentParser

from .data import MeshFolder
from .mosaic import MosaicNormaliser, MosaicSettings

__all__ = ["main", "training_statistics", "write_statistics"]

log = logging.getLogger(__name__)


def training_statistics(datamodule: MeshFolder) -> MosaicNormaliser:
    """The normaliser fitted on the grids of the training shapes of ``datamodule`` (a
    :class:`MeshFolder` with ``mosaic`` settings)."""
    if datamodule.mosaic is None:
        raise ValueError("the MeshFolder has no `mosaic` settings: it serves no mosaics")
    datamodule.setup()
    mosaics = datamodule.datasets["train"].mosaics
    if not mosaics:
        raise ValueError(f"{datamodule.root}: the training split holds no shapes")
    return MosaicNormaliser.fit([mosaic.to_set() for mosaic in mosaics])


def write_statistics(datamodule: MeshFolder, out: str | Path) -> Path:
    """Fit :func:`training_statistics` and write them to ``out`` with where they come from."""
    start = time.perf_counter()
    normaliser = training_statistics(datamodule)
    info = {
        "root": str(datamodule.root),
        "mosaic": asdict(datamodule.mosaic),
        "split": {
            "seed": datamodule.seed,
            "val_fraction": datamodule.val_fraction,
            "test_fraction": datamodule.test_fraction,
            "duplicate_tolerance": datamodule.duplicate_tolerance,
        },
        "training_files": [str(path) for path in datamodule.files["train"]],
        "seconds": round(time.perf_counter() - start, 1),
    }
    normaliser.save(out, info)
    log.info(
        "%s: statistics of %d training shapes in %.1f s",
        out,
        len(info["training_files"]),
        info["seconds"],
    )
    return Path(out)


def parser() -> ArgumentParser:
    """:class:`MeshFolder`'s options and ``--out``."""
    arguments = ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_class_arguments(MeshFolder, as_group=False)
    arguments.add_argument("--out", type=Path, required=True, help="the statistics JSON file")
    return arguments


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` (the command line when ``None``) and write the statistics."""
    arguments = parser()
    config = arguments.instantiate(arguments.parse_args(argv))
    settings = {key: value for key, value in vars(config).items() if key != "out"}
    settings["mosaic"] = settings["mosaic"] or MosaicSettings()
    return write_statistics(MeshFolder(**settings), config.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
