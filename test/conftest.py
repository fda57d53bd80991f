"""Shared fixtures: one small random-weight text encoder for model tests; a cache folder of
the test session's own (``MOBIUS_CACHE``, unless set), so tests never write into the
user's ``~/.cache/mobius`` and every run starts cold, as CI does."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_OWN_CACHE = None if os.environ.get("MOBIUS_CACHE") else tempfile.mkdtemp(prefix="mobius-test-")
if _OWN_CACHE:  # before anything reads it; nodes and tools the tests start inherit it
    os.environ["MOBIUS_CACHE"] = _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
