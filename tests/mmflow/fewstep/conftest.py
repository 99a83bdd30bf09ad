"""Fixtures shared by the few-step tests."""

import pytest

from ..training.toy import one_thread


@pytest.fixture
def single_thread():
    """Run the test on one torch thread (tiny networks train faster so)."""
    with one_thread():
        yield
