"""The training loop of the unified single-stage recipe.

Deterministic and resumable: batch composition and augmentation are pure functions of
(seed, step), and a checkpoint holds the model, optimizer, step and torch's
RNG state, so ``resume`` continues exactly where training stopped. A step whose loss is
NaN/inf is skipped (and said so) instead of poisoning the weights.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..config import Config
from ..data.coco import Sample
from ..data.mixed import CategorySource, MixedDataset, SourceSpec, merge_prompts
from ..data.synthetic import flip_expression
from ..data.transforms import ResizeFlip, collate, mosaic
from ..data.visual_prompts import sample_visual_prompts
from ..modeling.mobius import Mobius
from ..types import Target, VisualPrompts
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .criterion import SetCriterion
from .ema import ModelEma
from .matcher import HungarianMatcher
from .optim import build_optimizer, set_learning_rates

log = logging.getLogger(__name__)


class InstanceDataset(Protocol):
    """A single category dataset: samples and the prompt names of its labels (a
    ``MixedDataset`` of several sources and tasks works as well)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...
    @property
    def prompts(self) -> list[str]: ...


def build_criterion(cfg: Config) -> SetCriterion:
    t = cfg.train
    weights = {
        "class": t.loss_class,
        "bbox": t.loss_bbox,
        "giou": t.loss_giou,
        "mask": t.loss_mask,
        "dice": t.loss_dice,
    }
    matcher = HungarianMatcher(
        cost_class=t.loss_class,
        cost_bbox=t.loss_bbox,
        cost_giou=t.loss_giou,
        cost_mask=t.loss_mask,
        cost_dice=t.loss_dice,
        num_points=t.num_points,
    )
    return SetCriterion(
        matcher, weights, calibration=t.calibration, num_points=t.num_points, hybrid_k=t.hybrid_k
    )


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (what makes ``train.amp`` pay off
    there); unknown counts as yes."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


class Trainer:
    """Trains ``model`` on ``dataset`` with the recipe of ``cfg.train``, writing to ``out_dir``:
    ``log.csv`` (one row per ``log_every`` steps), ``last.pt`` (every ``checkpoint_every``
    steps and at the end). ``device`` (default CPU) is where the model trains; batches are
    assembled on the CPU and moved there."""

    def __init__(
        self,
        cfg: Config,
        model: Mobius,
        dataset: InstanceDataset,
        out_dir: str | Path,
        progress: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"--device {device}: this PyTorch sees no CUDA device; train with --device cpu"
            )
        model.to(self.device)
        if cfg.train.amp and self.device.type == "cpu" and not cpu_has_bfloat16():
            log.warning(
                "train.amp=true: this CPU has no native bfloat16 (AVX512-BF16/AMX), so "
                "bfloat16 autocast is emulated and likely slower than float32; set "
                "train.amp=false to train in float32"
            )
        if cfg.train.channels_last:
            model.to(memory_format=torch.channels_last)
        self.cfg, self.model, self.dataset = cfg, model, dataset
        self.data = (
            dataset
            if isinstance(dataset, MixedDataset)
            else MixedDataset([SourceSpec("train", CategorySource(dataset), 1.0)])
        )
        self.out_dir = Path(out_dir)
        t = cfg.train
        self.rank, self.world = distributed.rank_world()
        if t.batch_size % self.world:
            raise ValueError(
                f"train.batch_size={t.batch_size} (the global batch) must be divisible by the "
                f"{self.world} processes"
            )
        self.main = self.rank == 0  # only the main process logs and writes checkpoints
        self.progress = progress and self.main
        if t.freeze_text_encoder:
            for p in model.text_encoder.parameters():
                p.requires_grad_(False)
        # train.trainable: train only what matches; train.frozen: train all but what matches
        for option, prefixes, trains in (
            ("trainable", t.trainable, True),
            ("frozen", t.frozen, False),
        ):
            if not prefixes:
                continue
            names = [n for n, _ in model.named_parameters()]
            if not any(n.startswith(tuple(prefixes)) for n in names):
                raise ValueError(
                    f"train.{option}={prefixes} matches no parameter of the model; use prefixes "
                    "of its parameter names such as 'visual_prompter.', 'decoder.' or 'text_proj.'"
                )
            for n, p in model.named_parameters():
                if n.startswith(tuple(prefixes)) != trains:
                    p.requires_grad_(False)
        if t.visual_prob > 0:
            if model.visual_prompter is None:
                raise ValueError(
                    "train.visual_prob > 0 needs a visual prompter: set model.visual_prompter=true"
                )
            model.visual_prompter_trained = True  # this run trains it
        model.configure_training_queries(
            t.dn_number, t.dn_label_noise, t.dn_box_noise, t.hybrid_queries
        )
        self.ema = (
            ModelEma(model, t.ema_decay, "text_encoder." if t.freeze_text_encoder else None)
            if t.ema_decay > 0
            else None
        )
        self.criterion = build_criterion(cfg)
        self.optimizer = build_optimizer(model, t)
        self.net: torch.nn.Module = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, find_unused_parameters=True)
        self.transform = ResizeFlip(t.short_sides, t.max_size, t.flip_prob)
        self.prompts = list(self.data.prompts)  # recorded in checkpoints
        self.step = 0
        self.skipped = 0
        self.elapsed_s = 0.0  # training time so far, across resumes (for train.max_minutes)
        self.clock = time.perf_counter  # seconds, monotonic: what train.max_minutes counts
        self.stop_reason = ""  # which limit ended the last fit()
        self._tb: Any = None  # TensorBoard writer, opened at the first log row
        self._tb_enabled = t.tensorboard

    # -- data -----------------------------------------------------------------------------
    def batch_indices(self, step: int) -> list[int]:
        """Item indices (in the step's source) of the batch at ``step``."""
        return self.data.indices(step, self.cfg.train.batch_size, self.cfg.train.seed)[1]

    def batch(self, step: int):
        """(images, targets, sizes, prompts) of ``step``: augmented, padded, labels indexing
        the batch's merged prompt list (flipped images get left/right-swapped sentences)."""
        t = self.cfg.train
        resized, prompt_sets = [], []
        items = self.data.items(step, t.batch_size, t.seed, shard=(self.rank, self.world))
        positions = range(self.rank, t.batch_size, self.world)
        for i, item in zip(positions, items):
            sample = item.sample
            if t.mosaic_prob > 0 and item.task != "referring":
                rng = np.random.default_rng([t.seed, step, i, 17])
                if rng.random() < t.mosaic_prob:
                    sample = self.mosaic_sample(step, item, rng)
            r = self.transform(sample, np.random.default_rng([t.seed, step, i]))
            prompts = item.prompts
            if r.flipped and item.task == "referring":
                prompts = tuple(flip_expression(p) for p in prompts)
            resized.append(r)
            prompt_sets.append(prompts)
        prompts, offsets = merge_prompts(prompt_sets)
        for r, offset in zip(resized, offsets):
            r.labels = r.labels + offset
        images, targets, sizes = collate(resized)
        return images, targets, sizes, prompts

    def mosaic_sample(self, step: int, item, rng: np.random.Generator):
        """``item``'s sample in a 2x2 mosaic with three random images of the same source
        (so the labels share one prompt list); referring items never get here."""
        source = self.data.specs[self.data.source_of(step, self.cfg.train.seed)].source
        partners = [source.item(int(j), rng) for j in rng.integers(len(source), size=3)]
        samples = [item.sample] + [p.sample for p in partners]
        return mosaic(samples, rng, min_scale=self.cfg.train.mosaic_min_scale)

    def to_device(self, images, targets, visual):
        """The batch on the training device (a no-op on the CPU)."""
        d = self.device
        if d.type == "cpu":
            return images, targets, visual
        targets = [
            Target(t.labels.to(d), t.boxes.to(d), None if t.masks is None else t.masks.to(d))
            for t in targets
        ]
        if visual is not None:
            visual = VisualPrompts(visual.boxes.to(d), visual.valid.to(d), visual.classify_text)
        return images.to(d, non_blocking=True), targets, visual

    def visual_step(self, step: int) -> bool:
        """Whether ``step`` prompts with points/boxes (a function of seed and step)."""
        t = self.cfg.train
        return (
            t.visual_prob > 0 and np.random.default_rng([t.seed, step, 1]).random() < t.visual_prob
        )

    def _set_modes(self) -> None:
        """Train mode for what trains; frozen parts (outside train.trainable, inside
        train.frozen) stay in eval mode, so their BatchNorm statistics and dropout do not
        change either."""
        trainable, frozen = tuple(self.cfg.train.trainable), tuple(self.cfg.train.frozen)
        if not trainable:
            self.model.train()
        else:
            self.model.eval()
            for name, module in self.model.named_modules():
                if name and (name + ".").startswith(trainable):
                    module.train()
        for name, module in self.model.named_modules():
            if frozen and name and (name + ".").startswith(frozen):
                module.eval()

    # -- one step -------------------------------------------------------------------------
    def _autocast(self, images: torch.Tensor) -> torch.autocast:
        """``train.amp``: float16 autocast on CUDA, bfloat16 on the CPU (oneDNN's bf16
        kernels: convolutions and matmuls in half the bytes); off, a no-op context."""
        device = images.device.type
        dtype = torch.float16 if device == "cuda" else torch.bfloat16
        return torch.autocast(device, dtype=dtype, enabled=self.cfg.train.amp)

    def train_step(self) -> dict[str, float] | None:
        """One optimisation step; returns the loss terms, or None if the step was skipped.

        A visual step (``train.visual_prob``) prompts each image with points/boxes inside
        some of its instances, one instance per prompt; the text prompts then only
        condition the pixel decoder (or, half of the time, nothing does: a click may come
        without any text prompt)."""
        self._set_modes()
        images, targets, _, prompts = self.batch(self.step)
        visual = None
        if self.visual_step(self.step):
            t = self.cfg.train
            rng = np.random.default_rng([t.seed, self.step, 2])
            visual, targets = sample_visual_prompts(
                targets, rng, t.visual_per_image, t.visual_box_prob
            )
            if rng.random() < 0.5:
                prompts = []
        images, targets, visual = self.to_device(images, targets, visual)
        if not prompts:
            text = self.model.text_encoder.empty()
        elif self.cfg.train.freeze_text_encoder:
            text = self.model.encode_text(prompts)
        else:
            text = self.model.text_encoder(prompts)
        with self._autocast(images):
            if visual is None:
                outputs = self.net(self.model.normalize(images), text, targets=targets)
            else:  # no denoising/one-to-many queries: their labels index the text prompts
                outputs = self.net(self.model.normalize(images), text, with_aux=True, visual=visual)
            # DETR's normalisation: instances of the whole distributed batch per process
            num_targets = distributed.all_reduce(float(sum(len(t) for t in targets))) / self.world
            losses = self.criterion(outputs, targets, num_targets=num_targets)
        loss = losses["loss"]
        if not loss.requires_grad:
            raise ValueError(
                f"step {self.step}: no trainable parameter contributes to the loss "
                f"(train.trainable={self.cfg.train.trainable}, train.visual_prob="
                f"{self.cfg.train.visual_prob}); a visual prompter trained alone needs "
                "train.visual_prob=1"
            )
        self.optimizer.zero_grad(set_to_none=True)
        set_learning_rates(self.optimizer, self.step, self.cfg.train, self.elapsed_s)
        finite = distributed.all_reduce(float(torch.isfinite(loss)), "min") > 0
        if not finite:  # every process skips together
            self.skipped += 1
            log.warning(
                "step %d: loss is %s; skipping this update (%d skipped so far)",
                self.step,
                loss.item(),
                self.skipped,
            )
            self._advance()
            return None
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg.train.grad_clip
            )
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self._advance()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _advance(self) -> None:
        self.step += 1

    # -- loop -----------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> dict[str, float] | None:
        """Train until the first of the run's limits: the step ``max_steps`` (default
        ``cfg.train.max_steps``, where null is no step limit) and the wall-clock budget
        ``cfg.train.max_minutes`` (counted across resumes); returns the last losses.
        ``stop_reason`` says which limit ended the run, as the log does. ``max_steps`` (the
        CLI's ``--max-steps``) only stops the run: the lr schedule follows ``cfg.train``."""
        t = self.cfg.train
        total = max_steps if max_steps is not None else t.max_steps
        step_limit = f"train.max_steps={total}" if max_steps is None else f"--max-steps {total}"
        budget_s = t.max_minutes * 60.0
        if total is None and not budget_s:
            raise ValueError(
                "this run has no limit: set train.max_steps=N or a train.max_minutes budget"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="train", unit="step")
        last = None
        start = self.clock()
        done_at_start = self.step
        elapsed_at_start = self.elapsed_s
        try:
            while True:
                if total is not None and self.step >= total:
                    self.stop_reason = f"the step limit {step_limit} is reached"
                    break
                spent = budget_s and distributed.all_reduce(
                    float(self.elapsed_s >= budget_s), "max"
                )
                if spent:
                    self.stop_reason = (
                        f"the {t.max_minutes:g}-minute budget (train.max_minutes) is spent"
                    )
                    break
                losses = self.train_step()
                if losses is not None:
                    last = losses
                    rate = (self.step - done_at_start) / max(self.clock() - start, 1e-9)
                    if self.step % t.log_every == 0 or self.step == total:
                        self._log(losses, rate)
                    if bar is not None:
                        bar.set_postfix(loss=f"{losses['loss']:.3f}", it_s=f"{rate:.2f}")
                self.elapsed_s = elapsed_at_start + self.clock() - start
                if bar is not None:
                    bar.update(1)
                if self.step % t.checkpoint_every == 0:
                    self.save(self.out_dir / "last.pt")
                    if t.keep_checkpoints:
                        self.save(self.out_dir / f"step_{self.step:07d}.pt")
        finally:
            if bar is not None:
                bar.close()
        if self.main:
            log.info("stopping at step %d: %s", self.step, self.stop_reason)
        self.save(self.out_dir / "last.pt")
        return last

    def _log(self, losses: dict[str, float], rate: float) -> None:
        if not self.main:
            return
        path = self.out_dir / "log.csv"
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        row = {"step": self.step, "lr": lr, "steps_per_s": rate}
        row.update(losses)
        new = not path.exists()
        if new:
            fields = list(row)
        else:  # the first row fixes the columns; a term missing from a step stays empty
            with path.open(newline="") as f:
                fields = next(csv.reader(f), None) or list(row)
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        self._log_tensorboard(row)

    def _log_tensorboard(self, row: dict[str, float]) -> None:
        """The same row as TensorBoard scalars (``loss/<term>``, ``train/lr``, ...)."""
        if not self._tb_enabled:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning(
                    "TensorBoard logging is off: `pip install tensorboard` to get it "
                    "(log.csv has the same numbers); set train.tensorboard=false to hide this"
                )
                self._tb_enabled = False
                return
            # purge_step: after a resume, drop events the interrupted run wrote past this step
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step)
        step = int(row["step"])
        for key, value in row.items():
            if key == "step":
                continue
            group = "train" if key in ("lr", "steps_per_s") else "loss"
            self._tb.add_scalar(f"{group}/{key}", float(value), step)
        self._tb.flush()

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "skipped": self.skipped,
            "elapsed_s": self.elapsed_s,
            "world_size": self.world,
            "torch_rng": torch.get_rng_state(),
            **(
                {"cuda_rng": torch.cuda.get_rng_state(self.device)}
                if self.device.type == "cuda"
                else {}
            ),
            "config": asdict(self.cfg),
            "prompts": list(self.prompts),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (the main process only; every process checks that the
        processes' weights are still identical)."""
        distributed.check_in_sync(self.model)
        path = Path(path)
        if self.main:
            save_checkpoint(path, self.state_dict())
        return path

    def resume(self, path: str | Path) -> None:
        """Continue exactly from a checkpoint written by :meth:`save`."""
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped", 0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError(
                    f"{path} has no EMA state but train.ema_decay={self.cfg.train.ema_decay}; "
                    "resume with --set train.ema_decay=0 or start a new run"
                )
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
