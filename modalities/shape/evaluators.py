"""Shape metrics as torchmetrics ``Metric``s: reconstruction (averaged over shapes) and
generation (:class:`GenerationMetrics`: COV, MMD, 1-NNA against a reference set).

Surfaces are compared through points sampled on them: ``A`` from the prediction, ``B`` from
the target. ``d(x, S)`` is the distance from ``x`` to the other shape ``S``: to its nearest
sampled point (``update(pred, target)`` with point sets: chunked ``torch.cdist``, on any
device), or to its surface itself (``update(forward, backward)`` with the distances of each
side's points to the other side, from :func:`surface_distances`: exact point-to-triangle
distances). Point-to-point distances have a floor set by the sample spacing: 100,000 points on
a surface of area 10 lie about 0.005 apart, so a surface compared with a second sampling of
itself scores an F-score@0.01 near 0.96, not 1. Point-to-surface distances have no floor, so
reconstruction figures at small thresholds use them. Per shape:

    Chamfer-L2   mean_{a in A} d(a, B)^2 + mean_{b in B} d(b, A)^2     (DeepSDF's convention:
                 squared distances, both directions summed)
    F-score@tau  2 P R / (P + R),  P = share of A with d(a, B) < tau,
                 R = share of B with d(b, A) < tau                      (Tatarchenko et al. 2019)
    normal consistency  (mean_a |n_a . n_B(a)| + mean_b |n_b . n_A(b)|) / 2, n_S(x) the normal
                 of x's nearest neighbour in S                          (Occupancy Networks)
    volumetric IoU  |in_pred & in_target| / |in_pred | in_target| over query points, "in" meaning
                 SDF < 0

Figures are in the normalisation of :func:`modalities.shape.mesh.normalise_mesh` (longest
half-extent 0.9) unless the caller rescales.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .sdf import unsigned_distance

__all__ = [
    "ChamferDistance",
    "FScore",
    "GenerationMetrics",
    "NormalConsistency",
    "VolumetricIoU",
    "chamfer_l2",
    "nearest_neighbours",
    "pairwise_chamfer",
    "reconstruction_scores",
    "surface_distances",
    "watertight_share",
]


def nearest_neighbours(a: Tensor, b: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """For each point of ``a`` ``[N, 3]``: the squared distance to its nearest point of ``b``
    ``[M, 3]`` and that point's index, ``[N]`` each (``a`` in chunks of ``chunk`` rows)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(b) == 0:
        raise ValueError(
            f"point sets must be [N, D] and [M, D] with M > 0, got {a.shape}, {b.shape}"
        )
    distances, indices = [], []
    for start in range(0, len(a), chunk):
        block = torch.cdist(a[start : start + chunk], b)
        value, index = block.min(dim=1)
        distances.append(value.square())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def chamfer_l2(a: Tensor, b: Tensor) -> Tensor:
    """Chamfer-L2 of two point sets ``[N, 3]``, ``[M, 3]`` (module docstring), a scalar."""
    return nearest_neighbours(a, b)[0].mean() + nearest_neighbours(b, a)[0].mean()


def _check_batch(pred: Tensor, target: Tensor, width: int) -> None:
    if pred.ndim != 3 or target.ndim != 3 or pred.shape[0] != target.shape[0]:
        raise ValueError(
            f"expected [B, N, {width}] and [B, M, {width}] with the same B, got "
            f"{list(pred.shape)} and {list(target.shape)}"
        )
    if pred.shape[2] != width or target.shape[2] != width:
        raise ValueError(
            f"points must have {width} values each, got {pred.shape[2]}, {target.shape[2]}"
        )
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise ValueError("non-finite point coordinates")


class _ShapeMean(Metric):
    """Mean over shapes of a per-shape score (summed in ``total``, counted in ``count``)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _add(self, scores: Tensor) -> None:
        self.total += scores.double().sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        return self.total / self.count.clamp(min=1)


def surface_distances(points: Tensor, mesh: trimesh.Trimesh) -> Tensor:
    """Distances ``[N]`` from ``points`` ``[N, 3]`` to the surface of ``mesh`` (exact, libigl)."""
    return torch.as_tensor(unsigned_distance(mesh, points)[0], dtype=torch.float64)


def reconstruction_scores(
    predicted: trimesh.Trimesh,
    target: trimesh.Trimesh,
    samples: int = 100_000,
    threshold: float = 0.01,
) -> dict[str, float]:
    """F-score at ``threshold``, Chamfer-L2 and normal consistency of two meshes, from
    ``samples`` seeded surface points on each and exact distances to the other surface.

    The normal of a point's nearest place on the other surface is the normal of the face
    there, so no score has a floor from the sample spacing (module docstring).
    """
    sides = []
    for source, other, seed in ((predicted, target, 0), (target, predicted, 1)):
        points, faces = trimesh.sample.sample_surface(source, samples, seed=seed)
        distance, nearest_face = unsigned_distance(other, points)
        alignment = np.abs((source.face_normals[faces] * other.face_normals[nearest_face]).sum(1))
        sides.append((torch.as_tensor(distance)[None], float(alignment.mean())))
    (forward, forward_normals), (backward, backward_normals) = sides
    f_score, chamfer = FScore(threshold), ChamferDistance()
    f_score.update(forward, backward)
    chamfer.update(forward, backward)
    return {
        "f_score": f_score.compute().item(),
        "chamfer": chamfer.compute().item(),
        "normal_consistency": (forward_normals + backward_normals) / 2,
    }


def _check_distances(forward: Tensor, backward: Tensor) -> None:
    if forward.ndim != 2 or backward.ndim != 2 or len(forward) != len(backward):
        raise ValueError(
            f"distances must be [B, N] and [B, M] with the same B, got {list(forward.shape)} "
            f"and {list(backward.shape)}"
        )
    if not (torch.isfinite(forward).all() and torch.isfinite(backward).all()):
        raise ValueError("non-finite distances")


def _distances(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(d(a, B), d(b, A))`` ``[B, N]``, ``[B, M]``: of point sets ``[B, N, 3]``, ``[B, M, 3]``
    to their nearest points, or the inputs themselves when they are distances ``[B, N]``."""
    if pred.ndim == 2:
        _check_distances(pred, target)
        return pred.double(), target.double()
    _check_batch(pred, target, 3)
    pairs = list(zip(pred, target, strict=True))
    forward = torch.stack([nearest_neighbours(a, b)[0] for a, b in pairs]).sqrt()
    backward = torch.stack([nearest_neighbours(b, a)[0] for a, b in pairs]).sqrt()
    return forward.double(), backward.double()


class ChamferDistance(_ShapeMean):
    """Chamfer-L2 (module docstring) of point sets ``pred`` ``[B, N, 3]``, ``target``
    ``[B, M, 3]``, or of the distances ``[B, N]``, ``[B, M]`` of each side's points to the other
    side (predicted points to the target, target points to the prediction)."""

    def update(self, pred: Tensor, target: Tensor) -> None:
        forward, backward = _distances(pred, target)
        self._add(forward.square().mean(1) + backward.square().mean(1))


class FScore(_ShapeMean):
    """F-score at distance ``threshold`` (module docstring); 0 where both P and R are 0."""

    def __init__(self, threshold: float = 0.01) -> None:
        super().__init__()
        if threshold <= 0:
            raise ValueError(f"`threshold` must be > 0, got {threshold}")
        self.threshold = threshold

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Point sets or distances, as :class:`ChamferDistance`."""
        forward, backward = _distances(pred, target)
        precision = (forward < self.threshold).double().mean(1)
        recall = (backward < self.threshold).double().mean(1)
        both = precision + recall
        self._add(torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-300), both))


class NormalConsistency(_ShapeMean):
    """Normal consistency (module docstring) of oriented point sets ``[B, N, 6]`` (xyz, normal)."""

    def update(self, pred: Tensor, target: Tensor) -> None:
        _check_batch(pred, target, 6)
        scores = []
        for a, b in zip(pred, target, strict=True):
            normals_a = torch.nn.functional.normalize(a[:, 3:], dim=1)
            normals_b = torch.nn.functional.normalize(b[:, 3:], dim=1)
            to_b = nearest_neighbours(a[:, :3], b[:, :3])[1]
            to_a = nearest_neighbours(b[:, :3], a[:, :3])[1]
            forward = (normals_a * normals_b[to_b]).sum(1).abs().mean()
            backward = (normals_b * normals_a[to_a]).sum(1).abs().mean()
            scores.append((forward + backward) / 2)
        self._add(torch.stack(scores))


class VolumetricIoU(_ShapeMean):
    """IoU of the insides (SDF < 0) of ``pred_sdf`` and ``target_sdf`` ``[B, Q]`` at the same
    query points; a shape whose two insides are both empty scores 1."""

    def update(self, pred_sdf: Tensor, target_sdf: Tensor) -> None:
        if pred_sdf.shape != target_sdf.shape or pred_sdf.ndim != 2:
            raise ValueError(
                f"SDF values must be [B, Q] at the same points, got {list(pred_sdf.shape)} and "
                f"{list(target_sdf.shape)}"
            )
        if not (torch.isfinite(pred_sdf).all() and torch.isfinite(target_sdf).all()):
            raise ValueError("non-finite SDF values")
        self._add(inside_iou(pred_sdf, target_sdf))


def inside_iou(pred_sdf: Tensor, target_sdf: Tensor) -> Tensor:
    """Per-shape IoU ``[B]`` of the insides (SDF < 0) at shared query points ``[B, Q]``; two
    empty insides score 1."""
    inside_pred, inside_target = pred_sdf < 0, target_sdf < 0
    union = (inside_pred | inside_target).sum(1).double()
    overlap = (inside_pred & inside_target).sum(1).double()
    return torch.where(union > 0, overlap / union.clamp(min=1), torch.ones_like(union))


def pairwise_chamfer(first: Tensor, second: Tensor) -> Tensor:
    """Chamfer-L2 between every set of ``first`` ``[A, N, 3]`` and of ``second`` ``[B, M, 3]``,
    ``[A, B]``."""
    _check_batch(first[:1], second[:1], 3)
    return torch.stack([torch.stack([chamfer_l2(a, b) for b in second]) for a in first])


class GenerationMetrics(Metric):
    """Coverage, minimum matching distance and 1-NN accuracy of generated shapes against a
    reference set, with Chamfer-L2 between surface point sets (Achlioptas et al. 2018; Yang et
    al. 2019). With ``D`` the Chamfer distance, ``G`` the generated and ``R`` the reference sets:

        COV   = |{argmin_{r in R} D(g, r) : g in G}| / |R|          (higher is better)
        MMD   = mean_{r in R} min_{g in G} D(g, r)                  (lower is better)
        1-NNA = share of G u R whose nearest other member (leave-one-out) is from its own
                set                                                  (0.5 is best)

    ``update(generated, reference)`` takes point sets ``[B, N, 3]`` (either may be empty);
    ``compute`` returns ``{"cov", "mmd", "1-nna"}``.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("generated", default=[], dist_reduce_fx="cat")
        self.add_state("reference", default=[], dist_reduce_fx="cat")

    def update(self, generated: Tensor, reference: Tensor) -> None:
        for name, sets in (("generated", generated), ("reference", reference)):
            if sets.ndim != 3 or sets.shape[2] != 3:
                raise ValueError(f"{name} point sets must be [B, N, 3], got {list(sets.shape)}")
            if not torch.isfinite(sets).all():
                raise ValueError(f"non-finite point coordinates in the {name} sets")
            if len(sets):
                getattr(self, name).append(sets)

    def compute(self) -> dict[str, Tensor]:
        # a list of batches, or one tensor once torchmetrics has gathered it from processes
        if any(len(state) == 0 for state in (self.generated, self.reference)):
            raise ValueError("GenerationMetrics needs generated and reference shapes")
        generated, reference = dim_zero_cat(self.generated), dim_zero_cat(self.reference)
        both = torch.cat([generated, reference])
        distances = pairwise_chamfer(both, both)
        across = distances[: len(generated), len(generated) :]
        coverage = across.argmin(dim=1).unique().numel() / len(reference)
        mmd = across.min(dim=0).values.mean()
        distances.fill_diagonal_(float("inf"))
        is_generated = torch.arange(len(both)) < len(generated)
        nearest = distances.argmin(dim=1)
        accuracy = (is_generated[nearest] == is_generated).double().mean()
        return {"cov": torch.tensor(coverage), "mmd": mmd, "1-nna": accuracy}


def watertight_share(meshes: list[trimesh.Trimesh]) -> float:
    """The share of ``meshes`` (trimesh meshes) that are watertight; 0 for an empty list."""
    return sum(bool(mesh.is_watertight) for mesh in meshes) / len(meshes) if meshes else 0.0
