"""Shapes from images: how closely an image-conditioned shape flow follows its images.

Run from the repository root after training ``recipes/shape/latent_flow_image.yaml``::

    python -m benchmarks.shape_from_images \
        --checkpoint outputs/shape/latent_flow_image/checkpoints/last.ckpt \
        --cfg-scale 1 --cfg-scale 2 --cfg-scale 4 --out bench/shape_from_images

Each held-out shape of the recipe's split (``--split``) is rendered by the flow's adapter,
and the flow generates one shape from each image (seeded noise, the same for every setting,
EMA weights, the recipe's sampler), under each ``--cfg-scale``, and under two baselines that
measure what the image adds:

- ``no image``: every image masked out, the flow's image-unconditional estimate;
- ``shuffled``: each shape gets another held-out shape's image (a cyclic shift).

A generated shape is scored against the shape its image was rendered from (the ``shuffled``
one against the shape it should have followed): Chamfer-L2 on ``--points`` surface points a
shape in the normalisation of :func:`modalities.shape.mesh.normalise_mesh`, F-score@0.05, and
the watertight share. Conditioning works when the conditioned rows score a lower Chamfer
distance than both baselines. Writes ``shape_from_images.json``, ``shape_from_images.md``, the
first 16 images ``images.png`` and a preview ``<setting>.png`` of the first 16 generations per
setting under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.shape_split import add_scoring_arguments, add_split_arguments, scored_surfaces
from mmflow.hub import pretrained_from_checkpoint
from mmflow.modality import Condition
from modalities.shape import ChamferDistance, FScore, render_grid


def score(points: torch.Tensor, meshes: list, target: torch.Tensor) -> dict[str, float]:
    """Chamfer-L2 and F-score@0.05 of generated points against ``target`` ``[R, N, 3]``."""
    chamfer, fscore = ChamferDistance(), FScore(threshold=0.05)
    chamfer.update(points, target)
    fscore.update(points, target)
    closed = sum(mesh is not None and mesh.is_watertight for mesh in meshes)
    return {
        "chamfer": chamfer.compute().item(),
        "fscore@0.05": fscore.compute().item(),
        "watertight_share": closed / len(meshes),
    }


def settings(flow: Any, cond: Condition, scales: list[float]) -> list[tuple[str, Condition, float]]:
    """The conditions and guidance scales of each row (module docstring)."""
    null = flow.adapter.null_condition(cond)
    shuffled = {**cond, "image": cond["image"].roll(1, dims=0)}
    rows = [(f"image, cfg {scale:g}", cond, scale) for scale in scales]
    return [*rows, ("no image", null, 1.0), ("shuffled, cfg 1", shuffled, 1.0)]


def save_images(images: torch.Tensor, path: Path, columns: int = 4) -> Path:
    """The first view of each image ``[R, V, H, H]`` in a grid PNG (``columns`` a row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images, strict=False):
        axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    figure.subplots_adjust(0, 0, 1, 1, 0.05, 0.05)
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shape_from_images")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cfg-scale", type=float, action="append", default=None)
    parser.add_argument("--nfe", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the noise")
    add_split_arguments(parser)
    add_scoring_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flow = pretrained_from_checkpoint(args.checkpoint)
    if getattr(flow.adapter, "images", None) is None:
        raise SystemExit(f"{args.checkpoint}: the flow is not conditioned on images")
    flow.adapter.num_points = args.points
    surfaces, names = scored_surfaces(args)
    cond = flow.adapter.condition({"surface": surfaces})
    save_images(cond["image"][:16], out / "images.png")
    generator = torch.Generator().manual_seed(args.noise_seed)
    noise = torch.randn((len(surfaces), *flow.adapter.set_shape), generator=generator)
    rows = []
    for name, row_cond, scale in settings(flow, cond, args.cfg_scale or [1.0]):
        start = time.perf_counter()
        result = flow.generate(row_cond, noise, nfe=args.nfe, cfg_scale=scale)
        shapes = flow.adapter.decode(result.samples, row_cond)
        seconds = time.perf_counter() - start
        target = surfaces[:, :, :3]
        rows.append({"setting": name, **score(shapes.points, shapes.meshes, target)})
        rows[-1] |= {"nfe": result.nfe, "seconds": seconds}
        preview = name.replace(", ", "_").replace(" ", "_")
        render_grid(shapes.meshes[:16], out / f"{preview}.png", up=args.up)
        print(json.dumps(rows[-1]))
    table = markdown(rows, names)
    result = {"checkpoint": args.checkpoint, "shapes": names, "rows": rows}
    (out / "shape_from_images.json").write_text(json.dumps(result, indent=2))
    (out / "shape_from_images.md").write_text(table + "\n")
    print(table)
    return 0


def markdown(rows: list[dict[str, Any]], names: list[str]) -> str:
    lines = [
        f"{len(names)} held-out shapes, one generation each.",
        "",
        "| setting | Chamfer-L2 ↓ | F-score@0.05 ↑ | watertight | NFE |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['chamfer']:.4f} | {row['fscore@0.05']:.3f} | "
            f"{row['watertight_share']:.0%} | {row['nfe']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
