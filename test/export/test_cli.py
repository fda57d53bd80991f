"""`mobius export`, `predict --backend`, `embed` and `bench` on the shipped model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from mobius_core.cli import main
from mobius_core.data.synthetic import cached_split

pytest.importorskip("onnxruntime")
PROMPTS = "red circle,blue square,green triangle,yellow star,purple hexagon,orange cross"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert main(["export", "shapes_tiny", "--out", str(out / "m.onnx")]) == 0
    return out / "m.onnx"


def _predict(image, *extra, capsys) -> list[dict]:
    args = ["predict", str(image), "--prompts", PROMPTS, "--threshold", "0.1", "--json", *extra]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_prints_the_same_instances_with_torch_and_onnxruntime(exported, tmp_path, capsys):
    data = cached_split("val", 4, seed=0)
    seen = 0
    for info in data.images[:3]:
        image = data.image_dir / info["file_name"]
        a = _predict(image, capsys=capsys)
        b = _predict(image, "--backend", "ort", "--model", str(exported), capsys=capsys)
        assert [r["label"] for r in a] == [r["label"] for r in b]
        for ra, rb in zip(a, b):
            assert ra["box"] == pytest.approx(rb["box"], rel=1e-3, abs=0.11)  # printed to 0.1 px
        seen += len(a)
    assert seen > 0  # the shipped model finds shapes
    assert (
        main(["embed", "shapes_tiny", "--prompts", PROMPTS, "--out", str(tmp_path / "p.npz")]) == 0
    )
    capsys.readouterr()
    c = _predict(data.image_dir / data.images[0]["file_name"], "--backend", "ort", "--model",
                 str(exported), "--embeddings", str(tmp_path / "p.npz"), capsys=capsys)  # fmt: skip
    first = _predict(data.image_dir / data.images[0]["file_name"], capsys=capsys)
    assert [r["label"] for r in c] == [r["label"] for r in first]


def test_bench_positional_model_and_pruning_comparison(exported, capsys):
    args = ["bench", str(exported), "--prompts", "6", "--frames", "2", "--warmup", "1",
            "--compare-prune", "off", "--json"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    pruned, full = report["rows"]
    assert full["kept_mean"] == [50.0, 50.0, 50.0] and pruned["kept_mean"][-1] < 50
    assert pruned["inference_p50"] > 0 and report["peak_rss_mb"] > 0


def test_predict_errors_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert (
        main(["predict", str(image), "--prompts", "a", "--backend", "ort", "--model", str(bad)])
        == 2
    )
    assert "re-export" in capsys.readouterr().err
    if importlib.util.find_spec("tensorrt") is None:  # trt without --model: the shipped
        # model's engine, built from its cached bundle (test_tensorrt_double runs that)
        assert main(["predict", str(image), "--prompts", "a", "--backend", "trt"]) == 2
        assert "needs NVIDIA TensorRT" in capsys.readouterr().err
