"""The residual quantiser in closed form (codes of sums of codewords, EMA means, dead-code
resets, the straight-through gradient) and the body-part auto-encoder's round trips."""

import pytest
import torch
from scipy.spatial.transform import Rotation

from modalities.gesture.autoencoder import (
    MotionAutoencoder,
    ResidualQuantizer,
    integrate_velocity,
    root_velocity,
)
from modalities.gesture.skeleton import default_skeleton, matrix_to_rotation_6d


def fixed_quantizer(decay: float = 0.99) -> ResidualQuantizer:
    quantizer = ResidualQuantizer(2, 4, 2, decay=decay, quantizer_dropout=0.0, dead_threshold=0.0)
    quantizer.codebooks[0] = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]])
    quantizer.codebooks[1] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    quantizer.initialised.fill_(True)
    return quantizer.eval()


def test_a_sum_of_codewords_is_coded_exactly_by_the_residual_quantiser():
    quantizer = fixed_quantizer()
    z = torch.tensor([[10.0, 1.0], [-1.0, -10.0], [0.0, 9.0]]).T[None]  # [1, 2, 3]
    quantised, commitment, codes = quantizer(z)
    assert codes.tolist() == [[[0, 3, 1], [1, 2, 3]]]
    assert torch.equal(quantised, z) and commitment == 0
    coarse, _, coarse_codes = quantizer(z, num_active=1)
    assert coarse_codes.shape == (1, 1, 3)
    assert torch.equal(coarse[0].T, torch.tensor([[10.0, 0.0], [0.0, -10.0], [0.0, 10.0]]))


def test_the_straight_through_gradient_is_the_identity():
    quantizer = fixed_quantizer()
    z = torch.randn(2, 2, 5, requires_grad=True)
    weights = torch.randn(2, 2, 5)
    (quantizer(z)[0] * weights).sum().backward()
    assert torch.equal(z.grad, weights)


def test_with_no_memory_each_used_code_moves_to_the_mean_of_its_vectors():
    quantizer = fixed_quantizer(decay=0.0).train()
    vectors = torch.tensor([[9.0, 1.0], [11.0, -1.0], [1.0, 12.0]])
    quantizer(vectors.T[None], num_active=1)
    # Laplace smoothing moves the divisor by eps-sized amounts only.
    torch.testing.assert_close(
        quantizer.codebooks[0, 0], torch.tensor([10.0, 0.0]), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        quantizer.codebooks[0, 1], torch.tensor([1.0, 12.0]), rtol=1e-4, atol=1e-4
    )


def test_dead_codes_are_reset_to_batch_vectors():
    quantizer = fixed_quantizer(decay=0.0).train()
    quantizer.dead_threshold = 0.5
    vectors = torch.tensor([[9.0, 1.0], [11.0, -1.0]])
    quantizer(vectors.T[None], num_active=1)
    for code in (1, 2, 3):  # unused: reset to one of the batch's vectors
        assert any(torch.equal(quantizer.codebooks[0, code], v) for v in vectors)


def test_root_velocity_integrates_back_to_the_path():
    root = torch.cumsum(torch.randn(2, 16, 3), dim=1)
    back = integrate_velocity(root_velocity(root, 30.0), 30.0)
    torch.testing.assert_close(back, root - root[:, :1])


def motion_batch(batch: int = 4, frames: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    angles = torch.randn(batch, frames, 25, 3, generator=generator).cumsum(1) * 0.05
    matrices = torch.from_numpy(Rotation.from_rotvec(angles.reshape(-1, 3).numpy()).as_matrix())
    rotations = matrix_to_rotation_6d(matrices.reshape(batch, frames, 25, 3, 3)).float()
    root = torch.randn(batch, frames, 3, generator=generator).cumsum(1) * 0.01
    return {"rotations": rotations, "root": root}


def small_autoencoder(num_quantizers: int = 2) -> MotionAutoencoder:
    parts = {name: list(joints) for name, joints in default_skeleton().parts.items()}
    return MotionAutoencoder(parts, width=16, depth=1, latent_dim=8, num_quantizers=num_quantizers,
                             codebook_size=16, statistics_batches=1, latent_scale_batches=1)  # fmt: skip


def test_features_round_trip_to_motion_and_latents_have_the_part_time_layout():
    model = small_autoencoder()
    batch = motion_batch()
    model.measure_statistics([batch], 1)
    features = model.normalise(model.features(batch["rotations"], batch["root"]))
    rotations, root = model.to_motion(features, 25, start=batch["root"][:, 0])
    torch.testing.assert_close(rotations, batch["rotations"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(root, batch["root"], rtol=1e-4, atol=1e-4)
    latents = model.encode(batch["rotations"], batch["root"])
    assert latents.shape == (4, 4, 3, 8)  # 16 frames / 4, 3 parts, 8 channels
    decoded, _ = model.decode(latents, 25)
    assert decoded.shape == batch["rotations"].shape
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        model.encode(batch["rotations"][:, :15], batch["root"][:, :15])


@pytest.mark.parametrize("num_quantizers", [0, 2])
def test_a_few_steps_lower_the_reconstruction_loss(num_quantizers: int):
    torch.manual_seed(0)
    model = small_autoencoder(num_quantizers).train()
    batch = motion_batch()
    model.measure_statistics([batch], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model.batch_losses(batch)["loss"]
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.6 * first


def test_difference_losses_are_the_l1_of_frame_differences():
    model = MotionAutoencoder(
        {"upper": [0]}, root_part=None, velocity_weight=2.0, acceleration_weight=3.0
    )
    frames = torch.arange(5.0)
    target = torch.zeros(1, 5, 1)
    estimate = (frames**2).reshape(1, 5, 1)  # velocity 1, 3, 5, 7; acceleration 2, 2, 2
    expected = 2.0 * (1 + 3 + 5 + 7) / 4 + 3.0 * 2
    assert float(model._difference_losses(estimate, target)) == pytest.approx(expected)
    assert float(model._difference_losses(estimate, estimate + 4.0)) == 0.0
