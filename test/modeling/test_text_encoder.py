"""Text encoders: real MiniLM weights offline, CLIP tower, prompt limits, the cache."""

from __future__ import annotations

import copy
import logging
import pickle
import threading

import pytest
import torch

from mobius_core.modeling.text_encoder import (
    ClipTextEncoder,
    MiniLMTextEncoder,
    PromptError,
    TextEmbeddingCache,
    TextEncoder,
    build_text_encoder,
    minilm_path,
)
from mobius_core.types import TextEmbeddings


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2, loaded once for this module."""
    return MiniLMTextEncoder().eval()


def _assert_same(a: TextEmbeddings, b: TextEmbeddings) -> None:
    assert a.prompts == b.prompts
    assert torch.equal(a.token_mask, b.token_mask)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.pooled, b.pooled)


# -- MiniLM -------------------------------------------------------------------------------


def test_minilm_shapes_masks_and_unit_norm(minilm):
    e = minilm.encode(["red circle", "a small blue square on the left"])
    k, t, c = e.tokens.shape
    assert (k, c) == (2, 384) == tuple(e.pooled.shape) and minilm.dim == 384
    assert e.token_mask.shape == (2, t) and e.token_mask.dtype == torch.bool
    assert e.token_mask[1].all() and t == minilm.token_count("a small blue square on the left")
    assert e.token_mask[0].sum() == minilm.token_count("red circle") < t  # [CLS] red circle [SEP]
    assert torch.all(e.tokens[0][~e.token_mask[0]] == 0)
    torch.testing.assert_close(e.pooled.norm(dim=1), torch.ones(2))
    assert e.prompts == ("red circle", "a small blue square on the left")
    assert not e.tokens.requires_grad and e.tokens.device == minilm.device


def test_minilm_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    prompts = ["person", "forklift", "the red mug on the left of the laptop"]
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(prompts)
    torch.testing.assert_close(minilm.encode(prompts).pooled, torch.tensor(ref), atol=1e-5, rtol=0)


def test_minilm_weights_carry_meaning(minilm):
    p = minilm.encode(["red circle", "crimson circle", "blue square"]).pooled
    assert p[0] @ p[1] > p[0] @ p[2]


def test_gradients_flow_through_forward(random_text_encoder):
    e = random_text_encoder(["red circle", "blue square on the left"])
    assert e.tokens.requires_grad and e.pooled.requires_grad
    (e.tokens.square().sum() + e.pooled.sum()).backward()
    grads = {n: p.grad for n, p in random_text_encoder.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    assert any(g.abs().sum() > 0 for g in grads.values())
    random_text_encoder.zero_grad(set_to_none=True)


# -- cache --------------------------------------------------------------------------------


def test_cache_hits_misses_order_and_equality(minilm):
    minilm.cache.clear()
    hits, misses = minilm.cache.hits, minilm.cache.misses
    first = minilm.encode(["cat", "dog", "a forklift"])
    assert (minilm.cache.hits, minilm.cache.misses) == (hits, misses + 3)
    again = minilm.encode(["dog", "bird", "cat", "dog"])  # duplicates are allowed
    assert (minilm.cache.hits, minilm.cache.misses) == (hits + 2, misses + 4)
    assert again.prompts == ("dog", "bird", "cat", "dog")
    assert torch.equal(again.pooled[0], first.pooled[1]) and torch.equal(
        again.pooled[3], first.pooled[1]
    )
    assert torch.equal(again.pooled[2], first.pooled[0])
    # T is the longest requested prompt, not the longest ever cached
    assert again.tokens.shape[1] == minilm.token_count("dog") < first.tokens.shape[1]

    # a cached encode returns exactly what an uncached one does
    uncached = MiniLMTextEncoder(cache=TextEmbeddingCache()).eval()
    _assert_same(again, uncached.encode(["dog", "bird", "cat", "dog"]))
    _assert_same(first, uncached.encode(["cat", "dog", "a forklift"]))
    # and agrees with the differentiable path to float rounding
    ref = minilm(["dog", "bird", "cat", "dog"])
    torch.testing.assert_close(again.pooled, ref.pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.tokens, ref.tokens, atol=1e-5, rtol=0)
    # the result is a fresh tensor: editing it leaves the cache intact
    again.pooled.zero_()
    assert minilm.encode(["dog"]).pooled.abs().sum() > 0


def test_cache_lru_eviction_and_threads():
    cache = TextEmbeddingCache(capacity=2)
    assert TextEmbeddingCache().capacity == 4096
    for p in ("a", "b", "c"):
        cache.put(("enc", p), torch.zeros(1, 2), torch.zeros(2))
    assert ("enc", "a") not in cache and ("enc", "c") in cache and len(cache) == 2
    assert cache.get(("enc", "b")) is not None  # b becomes the most recently used
    cache.put(("enc", "d"), torch.zeros(1, 2), torch.zeros(2))
    assert ("enc", "b") in cache and ("enc", "c") not in cache
    assert cache.get(("enc", "c")) is None and (cache.hits, cache.misses) == (1, 1)
    cache.clear("other")
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="capacity"):
        TextEmbeddingCache(0)

    big = TextEmbeddingCache(capacity=64)
    errors = []

    def worker(i):
        try:
            for j in range(300):
                big.put(("enc", f"{i}-{j}"), torch.full((1, 2), float(j)), torch.zeros(2))
                entry = big.get(("enc", f"{i}-{j % 7}"))
                assert entry is None or entry[0].shape == (1, 2)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(big) == 64 and big.hits + big.misses == 8 * 300


def test_cache_follows_the_weights(random_text_encoder):
    enc = random_text_encoder
    before = enc.encode(["cat"])
    assert len(enc.cache) > 0
    state = copy.deepcopy(enc.state_dict())
    with torch.no_grad():  # an optimizer step changes the weights in place
        enc.model.embeddings.word_embeddings.weight.add_(0.5)
    changed = enc.encode(["cat"])
    assert not torch.equal(changed.pooled, before.pooled)
    enc.load_state_dict(state)
    _assert_same(enc.encode(["cat"]), before)


@pytest.mark.parametrize("kind", ["minilm", "clip"])
def test_batched_encoding_pads_within_a_batch_and_gives_the_same_embeddings(kind, request):
    if kind == "minilm":
        enc = request.getfixturevalue("own_text_encoder")
    else:
        enc = copy.deepcopy(request.getfixturevalue("clip_pair")[1])
    prompts = [("word " * n).strip() + f" {n}" for n in (9, 1, 5, 3, 12, 7, 2, 10, 4, 6)]
    assert len({enc.token_count(p) for p in prompts}) == len(prompts)  # no two the same
    calls = []
    embed = enc.embed
    enc.embed = lambda group: calls.append(len(group)) or embed(group)
    one = enc.encode(prompts)  # the default: one prompt per call, bit for bit
    assert calls == [1] * 10
    enc.cache.clear()
    calls.clear()
    four = enc.encode(prompts, batch_size=4)
    assert calls == [4, 4, 2]  # prompts of different lengths share a padded batch
    assert four.prompts == one.prompts and torch.equal(four.token_mask, one.token_mask)
    torch.testing.assert_close(four.tokens, one.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(four.pooled, one.pooled, atol=1e-5, rtol=1e-4)
    calls.clear()
    _assert_same(enc.encode(prompts, batch_size=4), four)  # served from the cache
    assert calls == []


def test_encode_in_training_mode_is_deterministic(random_text_encoder):
    was_training = random_text_encoder.training
    enc = random_text_encoder.train()
    try:
        a = enc.encode(["cat on a mat"])
        enc.cache.clear()
        b = enc.encode(["cat on a mat"])
        _assert_same(a, b)  # dropout is off inside encode
        assert enc.training
    finally:
        enc.train(was_training)


def test_deepcopy_and_pickle_start_with_an_empty_cache(random_text_encoder):
    random_text_encoder.encode(["cat"])
    twin = copy.deepcopy(random_text_encoder)  # e.g. an EMA copy
    assert len(twin.cache) == 0 and twin.cache is not random_text_encoder.cache
    _assert_same(twin.encode(["cat"]), random_text_encoder.encode(["cat"]))
    cache = pickle.loads(pickle.dumps(random_text_encoder.cache))
    assert len(cache) == 0 and cache.capacity == random_text_encoder.cache.capacity


# -- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "pattern"),
    [
        ([], "empty; give at least one prompt"),
        ("person", "single string 'person'; wrap it in a list"),
        (["person", "  \t"], "prompt 1 is empty or only whitespace; remove it"),
        (["person", 3], "prompt 1 has type int, not str"),
        (["person", None], "prompt 1 has type NoneType"),
        (["x" * 201], r"prompt 0 'x{37}\.\.\.' has 201 characters, over the limit of 200; shorten"),
        (
            [f"p{i}" for i in range(257)],
            "257 prompts exceed the limit of 256; split the vocabulary",
        ),
    ],
)
def test_prompt_limits(random_text_encoder, prompts, pattern):
    with pytest.raises(PromptError, match=pattern):
        random_text_encoder.encode(prompts)
    with pytest.raises(ValueError, match=pattern):  # forward validates too
        random_text_encoder(prompts)


def test_token_limit_and_custom_limits():
    enc = MiniLMTextEncoder(pretrained=False, max_prompts=2, max_chars=1000)
    long = "word " * 130
    with pytest.raises(
        PromptError, match=r"'word word .*' takes 132 tokens, over the .* limit of 128"
    ):
        enc.encode([long])
    assert enc.token_count("word " * 126) == 128
    enc.encode(["word " * 126])  # exactly at the limit is fine
    with pytest.raises(PromptError, match="3 prompts exceed the limit of 2"):
        enc.encode(["a", "b", "c"])


def test_prompts_are_stripped(random_text_encoder):
    e = random_text_encoder.encode(["  cat ", "cat"])
    assert e.prompts == ("cat", "cat") and torch.equal(e.pooled[0], e.pooled[1])
    assert random_text_encoder(["\tcat\n"]).prompts == ("cat",)


# -- factory ------------------------------------------------------------------------------


def test_build_text_encoder():
    with pytest.raises(ValueError, match=r"'bert' is unknown; choose one of \['clip', 'minilm'\]"):
        build_text_encoder("bert")
    enc = build_text_encoder("minilm", pretrained=False, max_prompts=3)
    assert isinstance(enc, MiniLMTextEncoder) and enc.max_prompts == 3
    with pytest.raises(TypeError):
        TextEncoder()  # abstract


# -- CLIP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_pair():
    """A random full open_clip ViT-B-16 and a text tower loaded from its state_dict."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    full = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tower = ClipTextEncoder("ViT-B-16").eval()
    tower.load_clip_state_dict(full.state_dict())
    return full, tower


def test_clip_tower_shapes_and_eot_pooling(clip_pair):
    full, tower = clip_pair
    assert not hasattr(tower, "visual") and tower.dim == 512 and tower.max_tokens == 77
    prompts = ["a photo of a dog", "cat", "what!?#"]  # '!' is token id 0 in "!?#"
    e = tower.encode(prompts)
    assert e.tokens.shape == (3, 7, 512) and e.pooled.shape == (3, 512)
    lengths = e.token_mask.sum(1)
    assert lengths.tolist() == [tower.token_count(p) for p in prompts] == [7, 3, 5]
    assert torch.all(e.tokens[1, 3:] == 0)
    for i in range(3):  # pooled is the token feature at end-of-text
        assert torch.equal(e.pooled[i], e.tokens[i, lengths[i] - 1])
    ids = tower.tokenizer(prompts)
    with torch.no_grad():
        ref = full.encode_text(ids)
    torch.testing.assert_close(e.pooled, ref, atol=1e-5, rtol=1e-5)


def test_clip_token_limit(clip_pair, monkeypatch):
    tower = clip_pair[1]
    monkeypatch.setattr(tower, "max_chars", 1000)
    with pytest.raises(PromptError, match=r"takes 82 tokens, over the ClipTextEncoder limit of 77"):
        tower.encode(["word " * 80])
    assert tower.token_count("word " * 75) == 77


def test_clip_random_weights_warn_once(caplog):
    pytest.importorskip("open_clip")
    with caplog.at_level(logging.WARNING, logger="mobius_core.modeling.text_encoder"):
        ClipTextEncoder("RN50")
        ClipTextEncoder("RN50")
    ours = [r for r in caplog.records if r.name == "mobius_core.modeling.text_encoder"]
    assert len(ours) == 1 and "random (untrained)" in ours[0].getMessage()


def test_clip_checkpoint_roundtrip(clip_pair, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    tower = clip_pair[1]
    path = tmp_path / "clip_text.pt"
    torch.save(tower.state_dict(), path)
    fresh = ClipTextEncoder("ViT-B-16", checkpoint=path).eval()
    assert str(path.resolve()) in fresh.name
    _assert_same(fresh.encode(["cat", "a red mug"]), tower.encode(["cat", "a red mug"]))

    st_path = tmp_path / "clip_text.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(st_path))
    with torch.no_grad():
        fresh.ln_final.weight.zero_()
    assert not torch.equal(fresh.encode(["cat"]).pooled, tower.encode(["cat"]).pooled)
    fresh.load_checkpoint(st_path)
    _assert_same(fresh.encode(["cat"]), tower.encode(["cat"]))


def test_clip_checkpoint_errors(clip_pair, tmp_path):
    pytest.importorskip("open_clip")
    tower = clip_pair[1]
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist.*never downloaded"):
        ClipTextEncoder("ViT-B-16", checkpoint=missing)
    garbage = tmp_path / "bad.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.pt could not be read"):
        ClipTextEncoder("ViT-B-16", checkpoint=garbage)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"bad\.safetensors could not be read"):
        tower.load_checkpoint(bad_st)
    other = tmp_path / "other.pt"
    torch.save({"unrelated.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"other\.pt has no key of the text tower"):
        tower.load_checkpoint(other)
    partial = tmp_path / "partial.pt"
    torch.save({"ln_final.weight": torch.ones(512)}, partial)
    with pytest.raises(ValueError, match=r"partial\.pt lacks \d+ keys"):
        tower.load_checkpoint(partial)
    wrong = tmp_path / "wrong.pt"
    torch.save({**tower.state_dict(), "ln_final.weight": torch.ones(768)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pt does not fit ViT-B-16: shapes differ"):
        tower.load_checkpoint(wrong)
