"""Shared fixtures: one small random-weight text encoder for model tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def random_text_encoder():
    """all-MiniLM-L6-v2's architecture with random weights: fast, no weights loaded."""
    from mobius_core.modeling.text_encoder import build_text_encoder

    return build_text_encoder("minilm", pretrained=False)
