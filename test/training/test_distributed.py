"""Distributed training on CPU with the gloo backend: collectives, sync check, torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from mobius_core.rle import encode_rle
from mobius_core.training.checkpoint import load_checkpoint


def _worker(rank: int, world: int, init_file: str, diverge: bool, results: dict) -> None:
    from mobius_core.training import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert distributed.rank_world() == (rank, world)
        total = distributed.all_reduce(float(rank + 1))
        biggest = distributed.all_reduce(float(rank + 1), "max")
        torch.manual_seed(0 if not diverge else rank)
        model = torch.nn.Linear(3, 2)
        try:
            distributed.check_in_sync(model)
            synced = True
        except RuntimeError:
            synced = False
        results[rank] = (total, biggest, synced)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("diverge", [False, True])
def test_collectives_and_the_sync_check(tmp_path, diverge):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), diverge, results), nprocs=2)
    assert dict(results) == {0: (3.0, 2.0, not diverge), 1: (3.0, 2.0, not diverge)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_train_and_write_one_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        arr = np.full((64, 64, 3), 30, dtype=np.uint8)
        mask = np.zeros((64, 64), dtype=bool)
        y, x = rng.integers(5, 30, size=2)
        mask[y : y + 25, x : x + 25] = True
        arr[mask] = (220, 40, 40)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 64, "width": 64})
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                     "bbox": [int(x), int(y), 25, 25], "area": 625,
                     "segmentation": encode_rle(mask)})  # fmt: skip
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "red box"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    sets = ["model.text_encoder.pretrained=false", "model.hidden_dim=64",
            "model.decoder.num_queries=8", "train.batch_size=2", "train.short_sides=[64]",
            "train.max_size=64", "train.num_points=64", "train.log_every=1",
            "train.checkpoint_every=2"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mobius_core.cli", "train", "shapes_tiny",
           "--data", str(tmp_path / "ann.json"), "--images", str(tmp_path),
           "--out", str(tmp_path / "run"), "--max-steps", "3", "--no-progress"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained to step 3 on 2 processes" in proc.stdout
    assert proc.stdout.count("trained to step") == 1  # only the main process reports
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 3 and state["world_size"] == 2
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 4  # header + steps 1..3, written once
