"""A tiny synthetic co-speech corpus, prepared once per test session from the real prompts."""

from pathlib import Path

import pytest

from modalities.gesture.corpus import CorpusSettings, prepare_cospeech

TINY_CORPUS = CorpusSettings(max_prompts=30, voices=("en-us",), recording_seconds=8.0)


@pytest.fixture(scope="session")
def tiny_corpus(cache_dir: str) -> tuple[dict, Path]:
    """The manifest and the cache root of 30 Asterisk prompts, recorded and read by one
    espeak-ng voice, with synthesised motion (a few seconds to prepare)."""
    return prepare_cospeech(TINY_CORPUS, Path(cache_dir)), Path(cache_dir)
