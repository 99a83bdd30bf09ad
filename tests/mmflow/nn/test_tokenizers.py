import pytest
import torch

from mmflow.nn import Patchify1D, Patchify2D, Patchify3D, SetTokens


def test_patchify2d_roundtrip_and_ids():
    tok = Patchify2D(in_channels=3, patch_size=2)
    x = torch.randn(2, 3, 4, 6)
    layout = tok.encode(x)
    assert layout.tokens.shape == (2, 6, 12) and tok.token_dim == 12
    assert layout.grid == (2, 3)
    assert layout.positions.tolist()[:4] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    torch.testing.assert_close(layout.tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(tok.decode(layout.tokens, layout), x)
    with pytest.raises(ValueError, match="^x:"):
        tok.encode(torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match="x_mask"):
        tok.encode(x, torch.ones(2, 6, dtype=torch.bool))


def test_patchify3d_roundtrip():
    tok = Patchify3D(in_channels=2, patch_size=(1, 2, 2))
    x = torch.randn(2, 2, 3, 4, 4)
    layout = tok.encode(x)
    assert layout.tokens.shape == (2, 12, 8) and layout.positions.shape == (12, 3)
    assert layout.grid == (3, 2, 2)
    # Token 7 is patch (t, h, w) = (1, 1, 1): frame 1, rows 2:4, cols 2:4, (c, pt, ph, pw) order.
    assert layout.positions[7].tolist() == [1, 1, 1]
    torch.testing.assert_close(layout.tokens[1, 7], x[1, :, 1:2, 2:4, 2:4].reshape(-1))
    assert torch.equal(tok.decode(layout.tokens, layout), x)


def test_patchify1d_mask_downsampling_and_padding():
    tok = Patchify1D(in_channels=2, patch_size=3)
    x = torch.randn(2, 7, 2)
    mask = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    layout = tok.encode(x, mask)
    assert layout.tokens.shape == (2, 3, 6)
    assert layout.mask.tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(layout.tokens[0, 1, 2:], torch.zeros(4))  # padded elements zeroed
    back = tok.decode(layout.tokens, layout)
    assert torch.equal(back, torch.where(mask[..., None], x, torch.zeros(())))
    with pytest.raises(ValueError, match="x_mask"):
        tok.encode(x, mask.float())


def test_set_tokens():
    tok = SetTokens(in_channels=4)
    x = torch.randn(2, 5, 4)
    layout = tok.encode(x)
    assert layout.positions is None and layout.grid == () and tok.num_axes == 0
    assert torch.equal(layout.tokens, x)  # one token per element, features unchanged
    mask = torch.tensor([[True, False, True, True, False], [True] * 5])
    masked = tok.encode(x, mask)
    assert torch.equal(masked.mask, mask)
    back = tok.decode(x + 1, masked)  # outputs at padded elements are zero
    assert torch.equal(back, torch.where(mask[..., None], x + 1, torch.zeros(())))
    assert torch.equal(tok.decode(layout.tokens, layout), x)
