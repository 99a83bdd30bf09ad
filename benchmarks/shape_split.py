"""The split the shape benchmarks score on: the recipes' ``MeshFolder`` from command-line
options, so a benchmark and the recipe it measures agree on which shapes are held out."""

from __future__ import annotations

import argparse

import torch

from modalities.shape import MeshFolder, cached_sdf_samples


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--root --seed --val-fraction --test-fraction --duplicate-tolerance --cache-dir`` with
    the defaults of ``recipes/shape/*.yaml``."""
    parser.add_argument("--root", default=".cache/data/cgal-meshes")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--duplicate-tolerance", type=float, default=0.01)
    parser.add_argument("--cache-dir", default=None, help="the SDF sample cache")


def split_datamodule(args: argparse.Namespace) -> MeshFolder:
    """The set-up ``MeshFolder`` of :func:`add_split_arguments`' options (invalid files
    skipped, as the recipes do)."""
    datamodule = MeshFolder(
        root=args.root,
        skip_invalid=True,
        duplicate_tolerance=args.duplicate_tolerance,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        cache_dir=args.cache_dir,
    )
    datamodule.setup()
    return datamodule


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """``--split`` (the shapes a benchmark scores against; ``held_out`` is validation and
    test), ``--points`` (surface points a shape) and ``--up`` (the previews' vertical axis)."""
    parser.add_argument("--split", default="held_out", choices=("held_out", "val", "test"))
    parser.add_argument("--points", type=int, default=2048, help="surface points a shape")
    parser.add_argument("--up", default="y", help="vertical axis of the previews")


def scored_surfaces(args: argparse.Namespace) -> tuple[torch.Tensor, list[str]]:
    """``[R, points, 6]`` cached surface points with normals of the ``--split`` shapes, and
    their names."""
    datamodule = split_datamodule(args)
    splits = ("val", "test") if args.split == "held_out" else (args.split,)
    files = [path for split in splits for path in datamodule.files[split]]
    surfaces = []
    for path in files:
        samples = cached_sdf_samples(path, datamodule.sdf, args.cache_dir)
        points, normals = samples.surface_points, samples.surface_normals
        surfaces.append(torch.cat([points[: args.points], normals[: args.points]], dim=1))
    return torch.stack(surfaces), [path.stem for path in files]
