"""Our multi-head attention equals torch's, masks included, and exports with dynamic lengths."""

from __future__ import annotations

import pytest
import torch

from mobius_core.modeling.layers.attention import MultiheadAttention


def test_matches_torch_multihead_attention_with_masks():
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ours = MultiheadAttention(32, 4)
    ours.load_state_dict(ref.state_dict())  # same parameter names
    q, k = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 3:] = True
    blocked = torch.zeros(5, 7, dtype=torch.bool)
    blocked[1, :2] = True
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": blocked},
                   {"key_padding_mask": pad, "attn_mask": blocked}):  # fmt: skip
        expected = ref(q, k, k, need_weights=False, **kwargs)[0]
        torch.testing.assert_close(ours(q, k, k, **kwargs)[0], expected)
    with pytest.raises(ValueError, match="need_weights"):
        ours(q, k, k, need_weights=True)


def test_onnx_trace_keeps_sequence_lengths_dynamic(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    attn = MultiheadAttention(16, 2).eval()
    q, k = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    path = tmp_path / "attn.onnx"
    torch.onnx.export(attn, (q, k, k), str(path), input_names=["q", "k", "v"],
                      output_names=["out"], dynamo=False,
                      dynamic_axes={"q": {1: "L"}, "k": {1: "S"}, "v": {1: "S"}})  # fmt: skip
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    q2, k2 = torch.randn(1, 6, 16), torch.randn(1, 9, 16)  # other lengths than traced
    (out,) = sess.run(None, {"q": q2.numpy(), "k": k2.numpy(), "v": k2.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), attn(q2, k2, k2)[0], atol=1e-5, rtol=1e-5)
