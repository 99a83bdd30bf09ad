"""The frozen sentence encoder behind text queries (all-MiniLM-L6-v2 from its wheel)."""

from __future__ import annotations

import pytest
import torch

from mmflow.pretrained import Frozen
from modalities.audio.text import SentenceEncoder


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_tokens_mask_and_pooled_shapes(encoder: SentenceEncoder) -> None:
    text = encoder(["piano", "a woman speaking in a quiet room", ""])
    assert text.tokens.shape[0] == 3 and text.tokens.shape[2] == encoder.dim == 384
    assert text.mask.sum(1).tolist()[2] == 2  # the empty query is [CLS] [SEP]
    assert text.mask[1].all() and not text.mask[0].all()
    torch.testing.assert_close(text.pooled.norm(dim=1), torch.ones(3))
    assert torch.all(text.tokens[~text.mask] == 0)


def test_pooled_is_the_mean_of_real_tokens(encoder: SentenceEncoder) -> None:
    text = encoder(["someone typing on a keyboard"])
    mean = text.tokens[0].mean(0)
    torch.testing.assert_close(text.pooled[0], mean / mean.norm())


def test_paraphrases_are_closer_than_other_classes(encoder: SentenceEncoder) -> None:
    """A real pretrained encoder: the query embedding carries meaning."""
    pooled = encoder(["a piano playing", "piano music", "a dog barking loudly"]).pooled
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


def test_encoding_does_not_depend_on_the_batch(encoder: SentenceEncoder) -> None:
    alone = encoder(["brass section"])
    together = encoder(["a much longer query about a brass section playing", "brass section"])
    length = alone.mask.sum()
    torch.testing.assert_close(together.tokens[1, :length], alone.tokens[0, :length])
    torch.testing.assert_close(together.pooled[1], alone.pooled[0])


def test_whitespace_is_the_empty_query_and_long_queries_are_truncated() -> None:
    encoder = SentenceEncoder(max_tokens=6)
    text = encoder(["   ", "", "one two three four five six seven eight nine"])
    torch.testing.assert_close(text.tokens[0], text.tokens[1])
    assert text.mask.sum(1).tolist() == [2, 2, 6]


def test_bad_captions_and_a_missing_encoder_folder(tmp_path, encoder: SentenceEncoder) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        encoder("piano")
    with pytest.raises(TypeError, match="strings"):
        encoder(["piano", 3])
    with pytest.raises(FileNotFoundError, match="no-encoder"):
        SentenceEncoder(tmp_path / "no-encoder")


def test_the_encoder_held_frozen_stays_in_eval_mode(encoder: SentenceEncoder) -> None:
    owner = torch.nn.Module()
    owner.text = Frozen(encoder)
    owner.train()
    assert not encoder.training and not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
