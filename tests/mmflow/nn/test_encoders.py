"""TimmEncoder: timm image models as token encoders, from random or a user's weights."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from mmflow.nn import TimmEncoder

TINY_VIT = {"img_size": 16, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}


def test_vit_gives_its_token_sequence_and_a_cnn_its_flattened_feature_map():
    vit = TimmEncoder("vit_tiny_patch16_224", in_chans=1, model_args=TINY_VIT)
    tokens = vit(torch.randn(3, 1, 16, 16))
    assert tokens.shape == (3, 1 + 4, 24) and vit.dim == 24  # class token + 2 x 2 patches
    cnn = TimmEncoder("resnet10t", in_chans=2)
    assert cnn(torch.randn(2, 2, 64, 64)).shape == (2, 2 * 2, cnn.dim)  # stride 32: 2 x 2


def test_tokens_depend_on_the_image():
    torch.manual_seed(0)
    vit = TimmEncoder("vit_tiny_patch16_224", in_chans=1, model_args=TINY_VIT)
    images = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(vit(images)[0], vit(images)[1])


def test_user_weights_load_without_the_classifier_head(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model("vit_tiny_patch16_224", num_classes=7, in_chans=1, **TINY_VIT)
    path = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    encoder = TimmEncoder(
        "vit_tiny_patch16_224", in_chans=1, weights=str(path), model_args=TINY_VIT
    )
    images = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(encoder(images), classifier.forward_features(images))


def test_bad_weights_and_images_are_clear_errors(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, **TINY_VIT)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    state["cls_token"][0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(
        ValueError, match="nan.safetensors: non-finite weights in \\['cls_token'\\]"
    ):
        TimmEncoder("vit_tiny_patch16_224", 1, str(tmp_path / "nan.safetensors"), TINY_VIT)
    wide = timm.create_model("vit_tiny_patch16_224", in_chans=1, **{**TINY_VIT, "embed_dim": 32})
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(tmp_path / "w.st"))
    with pytest.raises(ValueError, match="w.st: weights do not fit the timm model"):
        TimmEncoder("vit_tiny_patch16_224", 1, str(tmp_path / "w.st"), TINY_VIT)
    (tmp_path / "junk.safetensors").write_text("not weights")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        TimmEncoder("vit_tiny_patch16_224", 1, str(tmp_path / "junk.safetensors"), TINY_VIT)
    with pytest.raises(ValueError, match="expected images \\[B, 1, H, W\\]"):
        TimmEncoder("vit_tiny_patch16_224", 1, model_args=TINY_VIT)(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="cannot build timm model 'no_such_net'"):
        TimmEncoder("no_such_net")
