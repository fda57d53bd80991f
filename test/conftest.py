"""Shared fixtures: one small random-weight text encoder for model tests."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def random_text_encoder():
    """all-MiniLM-L6-v2's architecture with random weights: fast, no weights loaded.

    Shared by the whole session, so tests must not change it; one that hands it to a
    Trainer (which may freeze or train it) takes ``own_text_encoder`` instead."""
    from mobius_core.modeling.text_encoder import build_text_encoder

    return build_text_encoder("minilm", pretrained=False)


@pytest.fixture
def own_text_encoder(random_text_encoder):
    """A private copy of the shared encoder that a test may freeze, train or move."""
    return copy.deepcopy(random_text_encoder)


@pytest.fixture(autouse=True)
def _shared_text_encoder_unchanged(request):
    """Fail the test that changed the shared encoder, not the unlucky one after it."""
    if "random_text_encoder" not in request.fixturenames:
        yield
        return
    enc = request.getfixturevalue("random_text_encoder")
    before = [p.requires_grad for p in enc.parameters()]
    yield
    after = [p.requires_grad for p in enc.parameters()]
    assert before == after, "this test froze the shared random_text_encoder: use own_text_encoder"
