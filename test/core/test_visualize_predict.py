"""Overlay drawing and the `mobius predict` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mobius_core.cli import main
from mobius_core.postprocess import Instances
from mobius_core.visualize import draw_instances, palette


def test_draw_instances_colours_masks_and_boxes():
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    mask = np.zeros((1, 40, 50), dtype=bool)
    mask[0, 10:20, 10:30] = True
    inst = Instances(
        np.array([0.9], np.float32), np.array([0]), np.array([[10.0, 10.0, 30.0, 20.0]]), mask,
        ["red circle"],
    )  # fmt: skip
    out = draw_instances(image, inst)
    assert out.shape == image.shape and image.sum() == 0  # input untouched
    assert out[15, 20].sum() > 0  # mask tinted
    assert tuple(out[20, 30]) == palette(1)[0]  # box edge in the class colour
    assert out[35, 45].sum() == 0  # background unchanged
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(image.astype(np.float32), inst)


def test_predict_writes_overlay_and_json(tmp_path, capsys):
    img = np.full((64, 80, 3), 90, dtype=np.uint8)
    img[10:40, 10:40] = (220, 30, 30)
    Image.fromarray(img).save(tmp_path / "in.png")
    out_png = tmp_path / "overlay.png"
    args = ["predict", str(tmp_path / "in.png"), "--prompts", "red square, blue circle",
            "--set", "model.text_encoder.pretrained=false", "--size", "64",
            "--threshold", "0.0", "--out", str(out_png), "--json"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {"label", "score", "box"} <= set(rows[0])
    assert {r["label"] for r in rows} <= {"red square", "blue circle"}
    with Image.open(out_png) as im:
        assert im.size == (80, 64)
    assert main(["predict", str(tmp_path / "missing.png"), "--prompts", "a"]) == 2
    assert "cannot read image" in capsys.readouterr().err
