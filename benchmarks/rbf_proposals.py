"""Why Kim et al.'s RBF trails best-of-N at the smallest budget: a chain's proposals correlate.

At 10 NFE best-of-N draws five independent two-step Euler samples. RBF spends the same
budget on one chain: its proposals are stochastic steps from the chain's state, so they all
share what that state already fixed. This script measures how much that costs on the MNIST
model (null class, reward ``log p(target | x1_hat)``), with the most diverse transition
there is from noise, the DDIM step with fresh noise from ``t = 0`` to ``t1 = 1/2``:

    x' = alpha(t1) x1_hat(x0, 0) + sigma(t1) z,   z ~ N(0, I)    (linear path: x' = (m0 + z) / 2)

A proposal costs one evaluation, ``x1_hat(x', t1)``, which is also its two-step sample. For an
exact flow ``x1_hat(x, 0) = E[x1]`` for every noise (``x0`` carries no information about the
data), so these proposals would be independent two-step samples. A trained model is least
accurate at ``t = 0`` (training rarely draws it), and ``m0 = x1_hat(x0, 0)`` varies with
``x0``: the proposals of one chain share ``m0``.

The script prints the relative spread of ``m0`` over noises, ``||m0(x0) - m0(z)|| / ||m0(x0)||``,
and the mean reward of the best of ``k`` candidates, for ``k`` proposals of one chain and for
``k`` independent two-step Euler samples (best-of-N). ``docs/benchmarks.md`` has the figures. Writes ``metrics.json`` to ``--out``.

    python -m benchmarks.rbf_proposals
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from mmflow.hub import pretrained_from_checkpoint
from mmflow.interpolants import LinearPath
from mmflow.sampling.search import ClassLogProbability
from modalities.image import SmallCNN

TARGETS = (0, 3, 5, 7, 9)
SHOWN = (1, 2, 3, 5, 9, 10, 19)
MIDPOINT = 0.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/mnist/checkpoints/last.ckpt")
    parser.add_argument("--classifier", default=".cache/classifiers/mnist5k")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=max(SHOWN))
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", default="outputs/rbf_proposals")
    return parser.parse_args()


def best_of_first(rewards: Tensor, k: int) -> float:
    """Mean over images of the best reward among the first ``k`` candidates (``rewards [K, B]``)."""
    return float(rewards[:k].max(dim=0).values.mean())


def main() -> None:
    args = parse_args()
    for path in (Path(args.checkpoint), Path(args.classifier)):
        if not path.exists():
            raise SystemExit(f"error: {path} not found; run `make demo` first")
    flow = pretrained_from_checkpoint(args.checkpoint)
    classifier = SmallCNN.from_pretrained(args.classifier)
    reward = ClassLogProbability(classifier, flow.adapter.decode)
    per_class = max(1, args.images // len(TARGETS))
    targets = torch.tensor(TARGETS).repeat_interleave(per_class)
    null = flow.adapter.null_condition({"class_labels": targets})
    path, network, batch = LinearPath(), flow.network, targets.numel()
    generator = torch.Generator().manual_seed(args.seed)
    shape = (batch, *flow.adapter.image_shape)
    start, middle = torch.zeros(batch), torch.full((batch,), MIDPOINT)

    def data_estimate(x: Tensor, t: Tensor) -> Tensor:
        return path.velocity_to_data(network(x, t, **null), x, t)

    alpha, sigma = path.alpha(middle[:1]), path.noise_scale(middle[:1])

    def two_step_sample(data: Tensor, noise: Tensor) -> Tensor:
        """The data estimate at ``t1`` from ``x' = alpha(t1) data + sigma(t1) noise``."""
        return data_estimate(alpha * data + sigma * noise, middle)

    chain, independent, spreads = [], [], []
    with torch.no_grad():
        x0 = torch.randn(shape, generator=generator)
        m0 = data_estimate(x0, start)
        for _ in range(args.candidates):
            z = torch.randn(shape, generator=generator)
            m_z = data_estimate(z, start)
            spreads.append(
                float((m0 - m_z).flatten(1).norm(dim=1).mean() / m0.flatten(1).norm(dim=1).mean())
            )
            chain.append(reward(two_step_sample(m0, z), class_labels=targets))
            independent.append(reward(two_step_sample(m_z, z), class_labels=targets))
    chain_rewards, independent_rewards = torch.stack(chain), torch.stack(independent)
    spread = sum(spreads) / len(spreads)
    print(f"relative spread of x1_hat(x0, 0) over noises: {spread:.3f} ({batch} images)")
    print(f"{'k':>3} {'one chain':>10} {'independent':>12}")
    table = {}
    for k in (k for k in SHOWN if k <= args.candidates):
        table[k] = (best_of_first(chain_rewards, k), best_of_first(independent_rewards, k))
        print(f"{k:>3} {table[k][0]:>10.3f} {table[k][1]:>12.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "images": batch,
        "seed": args.seed,
        "spread_of_data_estimate_at_t0": spread,
        "best_of_k": {str(k): {"one_chain": c, "independent": i} for k, (c, i) in table.items()},
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    print(out / "metrics.json")


if __name__ == "__main__":
    main()
