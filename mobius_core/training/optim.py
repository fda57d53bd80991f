"""AdamW with per-part learning rates and the warm-up + decay schedule."""

from __future__ import annotations

import math

from torch import nn, optim

from ..config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> optim.AdamW:
    """AdamW (lr, weight decay from ``cfg``); backbone and text encoder at lr x their mults.

    One-dimensional parameters (norms, biases, scales) get no weight decay.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = name.split(".", 1)[0]
        part = part if part in ("backbone", "text_encoder") else "head"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    mult = {"backbone": cfg.backbone_lr_mult, "text_encoder": cfg.text_lr_mult, "head": 1.0}
    params = [
        {
            "params": ps,
            "lr": cfg.lr * mult[part],
            "base_lr": cfg.lr * mult[part],
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{part}{'' if decay else '_no_decay'}",
        }
        for (part, decay), ps in sorted(groups.items())
    ]
    return optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def schedule_progress(step: int, cfg: TrainConfig, elapsed_s: float) -> float:
    """With ``cfg.time_schedule``: the share of the run done, the larger of its two limits'
    shares, ``step / cfg.max_steps`` (none without a step limit) and ``elapsed_s`` (training
    seconds so far) over ``cfg.max_minutes``. It reaches 1 at whichever ends the run first."""
    done = elapsed_s / (cfg.max_minutes * 60.0)
    if cfg.max_steps is not None:
        done = max(done, step / cfg.max_steps)
    return done


def lr_factor(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then the decay of
    ``cfg.lr_decay`` (step drops, or linear/cosine to 0 at the end of the run).

    With ``cfg.time_schedule`` the schedule follows :func:`schedule_progress` instead of
    the step: a step drop comes at the same fraction of the run as its step is of
    ``cfg.schedule_steps`` (default ``cfg.max_steps``), and linear/cosine reach 0 at the
    first of the run's limits. Warm-up stays in steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "step":
        if cfg.time_schedule:
            budget_s = cfg.max_minutes * 60.0
            length = cfg.schedule_steps or cfg.max_steps
            drops = 0
            for s in cfg.lr_drop_steps:
                share = s / length
                # the same test as schedule_progress(...) >= share, without dividing
                drops += elapsed_s >= share * budget_s or (
                    cfg.max_steps is not None and step >= share * cfg.max_steps
                )
        else:
            drops = sum(step >= s for s in cfg.lr_drop_steps)
        return cfg.lr_drop_factor**drops
    if cfg.time_schedule:
        done = schedule_progress(step, cfg, elapsed_s)
    else:
        span = max(cfg.max_steps - cfg.warmup_steps, 1)
        done = (step - cfg.warmup_steps) / span
    done = min(max(done, 0.0), 1.0)
    if cfg.lr_decay == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))


def set_learning_rates(
    optimizer: optim.Optimizer, step: int, cfg: TrainConfig, elapsed_s: float = 0.0
) -> None:
    """Each group's lr = its base lr x ``lr_factor(step, elapsed_s)``: the schedule is a
    function of the step (and, with ``time_schedule``, of the training seconds, which
    checkpoints keep), so resuming needs nothing else."""
    factor = lr_factor(step, cfg, elapsed_s)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
