"""Text encoders: real MiniLM weights offline, CLIP tower, prompt limits, the cache."""

from __future__ import annotations

import threading

import pytest
import torch

from mobius_core.modeling.text_encoder import (
    ClipTextEncoder,
    MiniLMTextEncoder,
    PromptError,
    TextEmbeddingCache,
    build_text_encoder,
    minilm_path,
)


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder().eval()


def test_minilm_shapes_and_unit_norm(minilm):
    e = minilm.encode(["red circle", "a small blue square on the left"])
    k, t, c = e.tokens.shape
    assert (k, c) == (2, 384) and e.pooled.shape == (2, 384)
    assert e.token_mask.shape == (2, t) and e.token_mask[1].all()
    assert e.token_mask[0].sum() < e.token_mask[1].sum()
    assert torch.all(e.tokens[0][~e.token_mask[0]] == 0)
    torch.testing.assert_close(e.pooled.norm(dim=1), torch.ones(2))
    assert e.prompts == ("red circle", "a small blue square on the left")


def test_minilm_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    prompts = ["person", "forklift", "the red mug on the left"]
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(prompts)
    torch.testing.assert_close(minilm.encode(prompts).pooled, torch.tensor(ref), atol=1e-5, rtol=0)


def test_minilm_weights_carry_meaning(minilm):
    p = minilm.encode(["red circle", "crimson circle", "blue square"]).pooled
    assert p[0] @ p[1] > p[0] @ p[2]


def test_cache_hits_order_and_equality(minilm):
    minilm.cache.clear()
    first = minilm.encode(["cat", "dog"])
    hits, misses = minilm.cache.hits, minilm.cache.misses
    again = minilm.encode(["dog", "cat", "bird"])
    assert minilm.cache.hits == hits + 2 and minilm.cache.misses == misses + 1
    torch.testing.assert_close(again.pooled[0], first.pooled[1])
    torch.testing.assert_close(again.pooled[1], first.pooled[0])
    uncached = minilm(["dog", "cat", "bird"])
    torch.testing.assert_close(again.pooled, uncached.pooled.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(again.tokens, uncached.tokens.detach(), atol=1e-5, rtol=0)
    assert again.prompts == ("dog", "cat", "bird")


def test_cache_lru_eviction_and_threads():
    cache = TextEmbeddingCache(capacity=2)
    for p in ("a", "b", "c"):
        cache.put(("enc", p), torch.zeros(1, 2), torch.zeros(2))
    assert ("enc", "a") not in cache and ("enc", "c") in cache and len(cache) == 2
    cache.get(("enc", "b"))
    cache.put(("enc", "d"), torch.zeros(1, 2), torch.zeros(2))
    assert ("enc", "b") in cache and ("enc", "c") not in cache

    def worker(i):
        for j in range(200):
            cache.put(("enc", f"{i}-{j}"), torch.zeros(1, 2), torch.zeros(2))
            cache.get(("enc", f"{i}-{j}"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(cache) == 2


def test_cache_is_cleared_by_new_weights_and_training(minilm):
    minilm.encode(["cat"])
    assert len(minilm.cache) > 0
    minilm.load_state_dict(minilm.state_dict())
    assert len(minilm.cache) == 0
    minilm.encode(["cat"])
    minilm.train()
    assert len(minilm.cache) == 0
    minilm.eval()


@pytest.mark.parametrize(
    ("prompts", "pattern"),
    [
        ([], "empty"),
        ("person", "single string"),
        (["person", "  "], "prompt 1 is empty"),
        (["person", 3], "prompt 1 is a int"),
        (["x" * 201], "201 characters, over the limit of 200"),
        ([f"p{i}" for i in range(257)], "257 prompts exceed the limit of 256"),
    ],
)
def test_prompt_limits(minilm, prompts, pattern):
    with pytest.raises(PromptError, match=pattern):
        minilm.encode(prompts)


def test_token_limit(minilm, monkeypatch):
    monkeypatch.setattr(minilm, "max_chars", 10_000)
    with pytest.raises(PromptError, match=r"takes 132 tokens, over the .* limit of 128"):
        minilm.encode(["word " * 130])


def test_prompts_are_stripped(minilm):
    assert minilm.encode(["  cat "]).prompts == ("cat",)


def test_gradients_flow_through_forward(random_text_encoder):
    e = random_text_encoder(["red circle", "blue square"])
    (e.tokens.sum() + e.pooled.sum()).backward()
    grads = [p.grad for p in random_text_encoder.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    random_text_encoder.zero_grad()


def test_unknown_kind():
    with pytest.raises(ValueError, match="clip"):
        build_text_encoder("bert")


@pytest.fixture(scope="module")
def clip_tower():
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return ClipTextEncoder("ViT-B-16").eval()


def test_clip_tower_shapes_and_eot_pooling(clip_tower, monkeypatch):
    e = clip_tower.encode(["a photo of a dog", "cat"])
    assert e.tokens.shape[0] == 2 and e.tokens.shape[2] == 512 and e.pooled.shape == (2, 512)
    lengths = e.token_mask.sum(1)
    assert lengths[0] > lengths[1]
    # the pooled embedding is the token embedding at the end-of-text token
    torch.testing.assert_close(e.pooled[1], e.tokens[1, lengths[1] - 1])
    monkeypatch.setattr(clip_tower, "max_chars", 10_000)
    with pytest.raises(PromptError, match=r"over the .* limit of 77"):
        clip_tower.encode(["word " * 80])


def test_clip_checkpoint_roundtrip_and_errors(clip_tower, tmp_path):
    path = tmp_path / "clip_text.pt"
    torch.save(clip_tower.state_dict(), path)
    fresh = ClipTextEncoder("ViT-B-16", checkpoint=path).eval()
    torch.testing.assert_close(fresh.encode(["cat"]).pooled, clip_tower.encode(["cat"]).pooled)
    garbage = tmp_path / "bad.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        ClipTextEncoder("ViT-B-16", checkpoint=garbage)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ClipTextEncoder("ViT-B-16", checkpoint=tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"unrelated.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="no key of the text tower"):
        ClipTextEncoder("ViT-B-16", checkpoint=other)
