"""Trainer: exact resume, NaN guard, checkpoints, schedule and parameter groups."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from mobius_core.build import build_model
from mobius_core.config import ConfigError, load_config
from mobius_core.data.coco import CocoDataset
from mobius_core.modeling.text_encoder import build_text_encoder
from mobius_core.rle import encode_rle
from mobius_core.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mobius_core.training.engine import Trainer
from mobius_core.training.optim import build_optimizer, lr_factor

OVERRIDES = {
    "model.hidden_dim": 64,
    "model.decoder.num_layers": 2,
    "model.decoder.num_queries": 10,
    "model.decoder.ffn_dim": 64,
    "model.pixel_decoder.ffn_dim": 64,
    "train.batch_size": 2,
    "train.short_sides": [64, 96],
    "train.max_size": 128,
    "train.num_points": 128,
    "train.warmup_steps": 2,
    "train.lr": 1e-3,
    "train.log_every": 1,
    "train.checkpoint_every": 100,
    "train.dn_number": 20,  # resume must also replay the denoising noise exactly
    "train.hybrid_queries": 5,
}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(3):
        arr = np.full((80, 96, 3), 30, dtype=np.uint8)
        mask = np.zeros((80, 96), dtype=bool)
        y, x = rng.integers(5, 35), rng.integers(5, 45)
        mask[y : y + 30, x : x + 40] = True
        arr[mask] = (220, 40, 40) if i % 2 else (40, 40, 220)
        Image.fromarray(arr).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 80, "width": 96})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "iscrowd": 0,
                     "bbox": [int(x), int(y), 40, 30], "area": 1200,
                     "segmentation": encode_rle(mask)})  # fmt: skip
    cats = [{"id": 1, "name": "blue box"}, {"id": 2, "name": "red box"}]
    (root / "ann.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return CocoDataset(root / "ann.json", root)


def _trainer(dataset, out_dir, **extra):
    cfg = load_config("shapes_tiny", {**OVERRIDES, **extra})
    torch.manual_seed(0)
    text = build_text_encoder("minilm", pretrained=False)
    model = build_model(cfg, text_encoder=text)
    return Trainer(cfg, model, dataset, out_dir, progress=False)


def _fake_clock(trainer, seconds_per_step):
    """Make every step take ``seconds_per_step`` on the clock train.max_minutes counts,
    however fast or loaded the machine is."""
    trainer.clock = lambda: trainer.step * seconds_per_step


def _fail_past(trainer, steps):
    """Fail the test (instead of training on) once ``steps`` steps are done: no limit
    ended the run."""
    real = trainer.train_step

    def step():
        if trainer.step >= steps:
            raise AssertionError(f"still training at step {trainer.step}: no limit ended it")
        return real()

    trainer.train_step = step


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight = _trainer(tiny_dataset, tmp_path / "a")
    straight.fit(4)
    first = _trainer(tiny_dataset, tmp_path / "b")
    first.fit(2)
    resumed = _trainer(tiny_dataset, tmp_path / "c")
    resumed.resume(tmp_path / "b" / "last.pt")
    assert resumed.step == 2
    resumed.fit(4)
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items()
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    rows = (tmp_path / "a" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,lr,steps_per_s,") and len(rows) == 5


def test_nan_loss_skips_the_update(tiny_dataset, tmp_path, caplog):
    trainer = _trainer(tiny_dataset, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    real = trainer.criterion.forward

    def broken(outputs, targets, num_targets=None):
        losses = real(outputs, targets, num_targets)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    trainer.criterion.forward = broken
    with caplog.at_level(logging.WARNING):
        assert trainer.train_step() is None
    assert trainer.skipped == 1 and trainer.step == 1
    assert "skipping this update" in caplog.text
    for k, v in trainer.model.named_parameters():  # (batch-norm statistics may move)
        assert torch.equal(v, before[k]), k


def test_batches_are_a_function_of_seed_and_step(tiny_dataset, tmp_path):
    t = _trainer(tiny_dataset, tmp_path)
    assert t.batch_indices(0) == t.batch_indices(0)
    seen = t.batch_indices(0) + t.batch_indices(1)[:1]  # one epoch = 3 samples
    assert sorted(seen) == [0, 1, 2]
    a, b = t.batch(5), t.batch(5)
    assert torch.equal(a[0], b[0])


def test_checkpoint_is_atomic_and_errors_are_clear(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"model": {"w": torch.ones(2)}, "step": 3})
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    save_checkpoint(tmp_path / "other.pt", {"weights": torch.ones(1)})
    with pytest.raises(CheckpointError, match="no 'model'"):
        load_checkpoint(tmp_path / "other.pt")


def test_schedule_and_parameter_groups(own_text_encoder):
    cfg = load_config(
        "shapes_tiny",
        {
            "train.warmup_steps": 4,
            "train.lr_drop_steps": [10, 20],
            "train.lr": 1e-4,
            "train.backbone_lr_mult": 0.1,
            "train.time_schedule": False,  # the shipped recipe fits it to the time
        },
    )
    t = cfg.train
    assert [lr_factor(s, t) for s in (0, 3, 4, 9, 10, 20)] == pytest.approx(
        [0.25, 1.0, 1.0, 1.0, 0.1, 0.01]
    )
    model = build_model(cfg, text_encoder=own_text_encoder)
    groups = {g["name"]: g for g in build_optimizer(model, t).param_groups}
    assert groups["head"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert groups["text_encoder"]["lr"] == pytest.approx(1e-5)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.05


def test_cli_train_and_resume(tiny_dataset, tmp_path, capsys):
    from mobius_core.cli import main

    sets = [x for k, v in OVERRIDES.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    sets += ["--set", "model.text_encoder.pretrained=false"]
    data = ["--data", str(tiny_dataset.ann_file), "--images", str(tiny_dataset.image_dir)]
    base = ["train", "shapes_tiny", *data, "--out", str(tmp_path), "--no-progress", *sets]
    assert main([*base, "--max-steps", "2"]) == 0
    assert "trained to step 2" in capsys.readouterr().out
    assert main([*base, "--max-steps", "3"]) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--max-steps", "3", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_release_checkpoint_drops_training_state_and_text_encoder(tmp_path, capsys):
    from mobius_core.cli import main
    from mobius_core.training.checkpoint import CheckpointError, load_model_weights

    cfg = load_config("shapes_tiny", {"model.text_encoder.pretrained": False})
    torch.manual_seed(0)
    model = build_model(cfg, text_encoder=build_text_encoder("minilm", pretrained=False))
    full = save_checkpoint(
        tmp_path / "full.pt", {"model": model.state_dict(), "optimizer": {}, "step": 7}
    )
    assert main(["release", str(full), "--out", str(tmp_path / "rel.pt")]) == 0
    rel = load_checkpoint(tmp_path / "rel.pt")
    assert "optimizer" not in rel and rel["step"] == 7 and rel["text_encoder_included"] is False
    assert not any(k.startswith("text_encoder.") for k in rel["model"])
    fresh = build_model(cfg, text_encoder=build_text_encoder("minilm", pretrained=False))
    load_model_weights(fresh, rel, "rel.pt")
    torch.testing.assert_close(fresh.decoder.norm.weight, model.decoder.norm.weight)
    assert main(["release", str(full), "--out", str(tmp_path / "half.pt"), "--half"]) == 0
    half = load_checkpoint(tmp_path / "half.pt")
    assert half["model"]["decoder.norm.weight"].dtype == torch.float16
    load_model_weights(fresh, half, "half.pt")
    assert fresh.decoder.norm.weight.dtype == torch.float32
    broken = dict(rel, model={k: v for k, v in rel["model"].items() if "decoder.norm" not in k})
    with pytest.raises(CheckpointError, match="missing"):
        load_model_weights(fresh, broken, "broken.pt")


def test_wall_clock_budget_stops_training_and_survives_resume(tiny_dataset, tmp_path):
    budget = {"train.max_minutes": 0.05}  # 3 s at 1 s a step (the fake clock)
    trainer = _trainer(tiny_dataset, tmp_path / "a", **budget)
    _fake_clock(trainer, 1.0)
    trainer.fit(50)
    assert trainer.step == 3 and trainer.elapsed_s == 3.0  # the budget, not the 50 steps
    assert "train.max_minutes" in trainer.stop_reason
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state["step"] == 3 and state["elapsed_s"] == 3.0
    resumed = _trainer(tiny_dataset, tmp_path / "a", **budget)
    _fake_clock(resumed, 1.0)
    resumed.resume(tmp_path / "a" / "last.pt")
    resumed.fit(50)
    assert resumed.step == 3  # the budget counts across resumes
    assert "budget" in resumed.stop_reason


def test_time_schedule_drops_the_lr_at_the_same_fraction_of_the_budget():
    t = load_config(
        "shapes_tiny",
        {"train.warmup_steps": 2, "train.max_steps": None, "train.schedule_steps": 100,
         "train.lr_drop_steps": [50, 90], "train.max_minutes": 10.0,
         "train.time_schedule": True},
    ).train  # fmt: skip
    # no step limit: drops at 50% and 90% of 600 s whatever the step count
    assert [lr_factor(500, t, e) for e in (0.0, 299.0, 300.0, 539.0, 540.0)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01]
    )
    assert lr_factor(0, t, 1000.0) == pytest.approx(0.5)  # warm-up stays in steps
    with pytest.raises(ConfigError, match=r"train\.max_minutes"):
        load_config("shapes_tiny", {"train.time_schedule": True, "train.max_minutes": 0})


def test_time_schedule_fits_the_lr_to_whichever_limit_comes_first():
    budget_s = 38.4 * 60
    shipped = load_config("shapes_tiny").train
    assert (shipped.max_steps, shipped.schedule_steps, shipped.time_schedule) == (None, 6500, True)
    # the shipped recipe: no step limit, the drop at 5500/6500 of the 38.4 minutes
    drop_s = 5500 / 6500 * budget_s
    for step in (300, 6500, 20_000):
        assert lr_factor(step, shipped, drop_s - 1.0) == 1.0
        assert lr_factor(step, shipped, drop_s) == pytest.approx(0.1)
    # train.max_steps=65 ends the run long before the budget: the drop at 5500/6500 of 65
    steps = load_config("shapes_tiny", {"train.max_steps": 65, "train.warmup_steps": 2}).train
    assert [lr_factor(s, steps, 10.0) for s in (54, 56, 64)] == pytest.approx([1.0, 0.1, 0.1])
    assert lr_factor(54, steps, drop_s) == pytest.approx(0.1)  # or the budget, if first
    linear = load_config("shapes_tiny", {"train.max_steps": 100, "train.lr_decay": "linear",
                                         "train.warmup_steps": 0}).train  # fmt: skip
    # progress = max(step / max_steps, elapsed / budget)
    assert lr_factor(25, linear, budget_s / 2) == pytest.approx(0.5)
    assert lr_factor(75, linear, budget_s / 2) == pytest.approx(0.25)
    assert lr_factor(100, linear, 1.0) == pytest.approx(0.0)


def test_run_limits_are_checked_in_the_config():
    assert load_config("shapes_tiny", {"train.max_steps": 30}).train.max_steps == 30
    assert load_config("r50").train.max_steps == 1000  # step-scheduled configs keep theirs
    with pytest.raises(ConfigError, match=r"never end.*train\.max_steps=N"):
        load_config("shapes_tiny", {"train.time_schedule": False, "train.max_minutes": 0})
    with pytest.raises(ConfigError, match=r"train\.lr_decay=cosine.*null"):
        load_config("shapes_tiny", {"train.time_schedule": False, "train.lr_decay": "cosine"})
    with pytest.raises(ConfigError, match=r"set train\.schedule_steps=N"):
        load_config("shapes_tiny", {"train.schedule_steps": None})
    # a step schedule ended by the budget alone is fine
    load_config("shapes_tiny", {"train.time_schedule": False})


def test_time_schedule_runs_until_the_budget_and_keeps_checkpoints(tiny_dataset, tmp_path):
    trainer = _trainer(
        tiny_dataset, tmp_path, **{"train.max_minutes": 0.02, "train.time_schedule": True,
                                   "train.max_steps": None, "train.checkpoint_every": 2,
                                   "train.keep_checkpoints": True}
    )  # fmt: skip
    _fake_clock(trainer, 0.25)  # 1.2 s of budget: spent after the fifth step (1.25 s)
    _fail_past(trainer, 20)
    trainer.fit()
    assert trainer.step == 5 and trainer.elapsed_s == 1.25
    assert trainer.stop_reason == "the 0.02-minute budget (train.max_minutes) is spent"
    kept = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert kept == ["step_0000002.pt", "step_0000004.pt"]
    assert load_checkpoint(tmp_path / kept[0])["step"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 5


def test_max_steps_ends_a_time_scheduled_run_and_the_log_says_so(tiny_dataset, tmp_path, caplog):
    from mobius_core.training import engine

    # shapes_tiny's 38.4-minute time schedule with a step limit: the steps come first
    trainer = _trainer(tiny_dataset, tmp_path, **{"train.max_steps": 3})
    assert trainer.cfg.train.time_schedule and trainer.cfg.train.max_minutes == 38.4
    _fake_clock(trainer, 1.0)
    _fail_past(trainer, 6)
    with caplog.at_level(logging.INFO, logger=engine.log.name):
        trainer.fit()
    assert trainer.step == 3 and trainer.elapsed_s == 3.0
    assert trainer.stop_reason == "the step limit train.max_steps=3 is reached"
    assert "stopping at step 3: the step limit train.max_steps=3 is reached" in caplog.text


def test_cli_set_max_steps_ends_a_time_scheduled_run(tiny_dataset, tmp_path, capsys, monkeypatch):
    from mobius_core.cli import main

    real = Trainer.train_step

    def step(self):  # fail instead of training on for the 38.4-minute budget
        if self.step >= 6:
            raise AssertionError(f"still training at step {self.step}: max_steps was ignored")
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", step)
    sets = [x for k, v in OVERRIDES.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    sets += ["--set", "model.text_encoder.pretrained=false", "--set", "train.max_steps=3"]
    data = ["--data", str(tiny_dataset.ann_file), "--images", str(tiny_dataset.image_dir)]
    argv = ["train", "shapes_tiny", *data, "--out", str(tmp_path), "--no-progress", *sets]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained to step 3: the step limit train.max_steps=3 is reached" in out
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_ema_follows_the_weights_and_is_what_a_release_ships(tiny_dataset, tmp_path):
    from mobius_core.training.checkpoint import release_state
    from mobius_core.training.ema import ModelEma

    lin = torch.nn.Linear(2, 1)
    ema = ModelEma(lin, decay=0.5)
    before = ema.shadow["weight"].clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)  # ramped decay: min(0.5, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.shadow["weight"], d * before + (1 - d) * lin.weight)
    with pytest.raises(ValueError, match="EMA decay"):
        ModelEma(lin, decay=1.0)

    trainer = _trainer(tiny_dataset, tmp_path / "a", **{"train.ema_decay": 0.9})
    trainer.fit(3)
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state["ema"]["updates"] == 3
    assert not any(k.startswith("text_encoder.") for k in state["ema"]["shadow"])
    key = "decoder.box_head.layers.0.weight"
    assert not torch.equal(state["ema"]["shadow"][key], state["model"][key])
    released = release_state(state)
    assert released["ema_averaged"]
    assert torch.equal(released["model"][key], state["ema"]["shadow"][key])
    raw = release_state(state, ema=False)
    assert torch.equal(raw["model"][key], state["model"][key]) and not raw["ema_averaged"]
    # a release (and one written before the flag was renamed, "ema": True) loads as it is
    from mobius_core.training.checkpoint import load_model_weights

    for rel in (released, {**released, "ema": True}):
        model = trainer.model
        load_model_weights(model, rel, "release.pt")
        torch.testing.assert_close(model.state_dict()[key], state["ema"]["shadow"][key])
    resumed = _trainer(tiny_dataset, tmp_path / "a", **{"train.ema_decay": 0.9})
    resumed.resume(tmp_path / "a" / "last.pt")
    assert resumed.ema.updates == 3
    plain = _trainer(tiny_dataset, tmp_path / "b")
    with pytest.raises(ValueError, match="no EMA state"):
        _trainer(tiny_dataset, tmp_path / "a", **{"train.ema_decay": 0.9}).resume(
            plain.save(tmp_path / "b" / "last.pt")
        )


def test_tensorboard_scalars_match_the_csv_log(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in requirements-dev.txt")
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tiny_dataset, tmp_path)
    trainer.fit(3)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("loss/loss")
    assert [e.step for e in events] == [1, 2, 3]
    for event, row in zip(events, rows):
        assert event.value == pytest.approx(float(row["loss"]), rel=1e-6)
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3]


def test_linear_and_cosine_decay_reach_zero_at_the_end_of_steps_or_budget():
    base = {"train.warmup_steps": 10, "train.max_steps": 110, "train.lr_drop_steps": [50],
            "train.time_schedule": False}  # fmt: skip
    lin = load_config("shapes_tiny", {**base, "train.lr_decay": "linear"}).train
    assert lr_factor(4, lin) == pytest.approx(0.5)  # warm-up unchanged
    assert [lr_factor(s, lin) for s in (10, 60, 110, 500)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    cos = load_config("shapes_tiny", {**base, "train.lr_decay": "cosine"}).train
    assert [lr_factor(s, cos) for s in (10, 35, 60, 110)] == pytest.approx(
        [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.0]
    )
    timed = load_config(
        "shapes_tiny",
        {**base, "train.lr_decay": "linear", "train.time_schedule": True, "train.max_minutes": 1.0,
         "train.max_steps": None},
    ).train  # fmt: skip
    # no step limit: the budget's fraction, whatever the step; lr_drop_steps only serve the
    # step decay
    assert [lr_factor(1000, timed, e) for e in (0.0, 15.0, 60.0)] == pytest.approx([1.0, 0.75, 0.0])
    with pytest.raises(ConfigError, match="lr_decay"):
        load_config("shapes_tiny", {"train.lr_decay": "exponential"})


def test_mosaic_batches_are_deterministic_and_off_by_default(tiny_dataset, tmp_path):
    plain = _trainer(tiny_dataset, tmp_path / "a")
    mixed = _trainer(tiny_dataset, tmp_path / "b", **{"train.mosaic_prob": 1.0})
    again = _trainer(tiny_dataset, tmp_path / "c", **{"train.mosaic_prob": 1.0})
    zero = _trainer(tiny_dataset, tmp_path / "d", **{"train.mosaic_prob": 0.0})
    for step in range(3):
        a, b, c, d = (t.batch(step) for t in (plain, mixed, again, zero))
        torch.testing.assert_close(b[0], c[0])  # a function of (seed, step)
        torch.testing.assert_close(a[0], d[0])
        assert a[0].shape == b[0].shape
        assert not torch.equal(a[0], b[0])  # the mosaic changed the images
        for tb in b[1]:  # each target's box is its mask's box, in the padded frame
            hp, wp = tb.masks.shape[-2:]
            for box, m in zip(tb.boxes, tb.masks):
                ys, xs = torch.nonzero(m, as_tuple=True)
                cx, cy, w, h = box.tolist()
                assert (cx - w / 2) * wp == pytest.approx(float(xs.min()), abs=0.5)
                assert (cy + h / 2) * hp == pytest.approx(float(ys.max()) + 1, abs=0.5)
    mixed.fit(2)  # and trains
    assert mixed.step == 2


def test_training_device_is_checked(tiny_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    cfg = load_config("shapes_tiny", OVERRIDES)
    model = build_model(cfg, text_encoder=build_text_encoder("minilm", pretrained=False))
    with pytest.raises(ValueError, match=r"no CUDA device.*--device cpu"):
        Trainer(cfg, model, tiny_dataset, tmp_path, progress=False, device="cuda")
    trainer = Trainer(cfg, model, tiny_dataset, tmp_path, progress=False, device="cpu")
    images, targets, _ = trainer.to_device(*trainer.batch(0)[:2], None)
    assert images.device.type == "cpu" and targets[0].labels.device.type == "cpu"


def test_recorded_config_is_the_model_a_checkpoint_trained():
    from mobius_core.training.checkpoint import recorded_config

    trained = load_config("shapes_tiny", {"model.decoder.shape_grid": 6})
    state = {"config": {"model": asdict(trained.model)}}
    assert recorded_config(state, "shapes_tiny").model.decoder.shape_grid == 6
    # a release or an old checkpoint without a recorded config: the zoo's
    assert recorded_config({}, "shapes_tiny").model == load_config("shapes_tiny").model
    assert recorded_config({"config": {}}, "shapes_tiny").model == load_config("shapes_tiny").model


def test_frozen_prefixes_keep_their_initial_values(tiny_dataset, tmp_path):
    frozen = {"train.frozen": ["text_proj.", "backbone."]}
    trainer = _trainer(tiny_dataset, tmp_path / "f", **frozen)
    before = {n: p.detach().clone() for n, p in trainer.model.state_dict().items()}
    trainer.fit(2)
    after = trainer.model.state_dict()
    for name in before:  # weights and BatchNorm statistics alike
        if name.startswith(("text_proj.", "backbone.")):
            assert torch.equal(after[name], before[name]), name
    moved = [n for n in before if n.startswith("decoder.") and not torch.equal(after[n], before[n])]
    assert moved  # everything else still trains
    with pytest.raises(ValueError, match=r"train.frozen=.*matches no parameter"):
        _trainer(tiny_dataset, tmp_path / "g", **{"train.frozen": ["txt_proj."]})


def test_channels_last_trains_the_same_model(tiny_dataset, tmp_path):
    plain = _trainer(tiny_dataset, tmp_path / "a")
    nhwc = _trainer(tiny_dataset, tmp_path / "b", **{"train.channels_last": True})
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    losses = []
    for trainer in (plain, nhwc):
        torch.manual_seed(1)  # the same mask points sampled
        losses.append(trainer.train_step()["loss"])
    # the same arithmetic in another order: the same loss and gradients (not the same
    # weights after: Adam's first update is lr * sign(g) wherever g is about 0)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    grads = [[p.grad for p in t.model.parameters() if p.grad is not None] for t in (plain, nhwc)]
    assert len(grads[0]) == len(grads[1]) > 100
    a, b = (torch.cat([g.flatten() for g in gs]) for gs in grads)
    # (~2% apart: the mask loss's most uncertain points are a top-k, and near-ties
    # fall either way; a wrong layout or a dropped gradient is ~100% apart)
    assert float((b - a).norm() / a.norm()) < 0.05
    nhwc.train_step()
    nhwc.train_step()
    nhwc.save(tmp_path / "b" / "last.pt")  # a checkpoint loads into a default (contiguous) model
    fresh = _trainer(tiny_dataset, tmp_path / "c")
    fresh.resume(tmp_path / "b" / "last.pt")
    assert fresh.step == 3


def test_amp_on_the_cpu_runs_in_bfloat16_and_keeps_float32_weights(tiny_dataset, tmp_path):
    plain = _trainer(tiny_dataset, tmp_path / "a", **{"train.amp": False})
    amp = _trainer(tiny_dataset, tmp_path / "b", **{"train.amp": True})
    seen = []
    conv = next(m for m in amp.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = []
    for trainer in (plain, amp):
        torch.manual_seed(1)  # the same mask points sampled
        losses.append(trainer.train_step()["loss"])
    assert seen == [torch.bfloat16]
    # bfloat16 keeps 8 bits of mantissa: the same loss to about a percent, not bit-equal
    assert losses[1] == pytest.approx(losses[0], rel=0.05)
    assert losses[1] != losses[0]
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())
    grads = [p.grad for p in amp.model.parameters() if p.grad is not None]
    assert len(grads) > 100 and all(g.dtype == torch.float32 for g in grads)
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_amp_on_a_cpu_without_bfloat16_warns_and_names_the_fix(
    tiny_dataset, tmp_path, monkeypatch, caplog
):
    from mobius_core.training import engine

    assert isinstance(engine.cpu_has_bfloat16(), bool)
    monkeypatch.setattr(engine, "cpu_has_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=engine.log.name):
        _trainer(tiny_dataset, tmp_path / "a", **{"train.amp": False})
        assert "bfloat16" not in caplog.text
        _trainer(tiny_dataset, tmp_path / "b", **{"train.amp": True})
    assert "no native bfloat16" in caplog.text and "train.amp=false" in caplog.text
