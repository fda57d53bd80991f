"""Turn configs into built parts: explicit tables, no registries, no import side effects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .config import Config, ConfigError, ModelConfig, PruningConfig, load_config
from .modeling.backbone import build_backbone
from .modeling.baselines.maskdino_encoder import MaskDINOEncoder
from .modeling.baselines.rtdetr_encoder import RTDETRHybridEncoder
from .modeling.bottleneck_encoder import BottleneckEncoder
from .modeling.decoder import TransformerDecoder
from .modeling.heads import TextClassifier
from .modeling.mobius import Mobius
from .modeling.pruning import PruneSchedule
from .modeling.query_selection import LanguageGuidedQuerySelection
from .modeling.text_encoder import TextEncoder, build_text_encoder
from .modeling.visual_prompter import VisualPrompter


def _common(cfg: ModelConfig) -> dict[str, Any]:
    p = cfg.pixel_decoder
    return {
        "dim": cfg.hidden_dim,
        "num_blocks": p.num_blocks,
        "num_heads": p.num_heads,
        "ffn_dim": p.ffn_dim,
        "dropout": p.dropout,
        "text_fusion": p.text_fusion,
        "mask_conv": p.mask_conv,
    }


def _bottleneck(cfg: ModelConfig, channels: tuple[int, ...], strides: tuple[int, ...]) -> nn.Module:
    p = cfg.pixel_decoder
    return BottleneckEncoder(
        channels,
        strides,
        num_points=p.num_points,
        bottleneck_stride=p.bottleneck_stride,
        **_common(cfg),
    )


def _maskdino(cfg: ModelConfig, channels: tuple[int, ...], strides: tuple[int, ...]) -> nn.Module:
    num_points = cfg.pixel_decoder.num_points
    return MaskDINOEncoder(channels, strides, num_points=num_points, **_common(cfg))


def _rtdetr(cfg: ModelConfig, channels: tuple[int, ...], strides: tuple[int, ...]) -> nn.Module:
    return RTDETRHybridEncoder(channels, strides, **_common(cfg))


PIXEL_DECODERS = {"bottleneck": _bottleneck, "maskdino": _maskdino, "rtdetr": _rtdetr}


def build_text_encoder_from_config(cfg: ModelConfig) -> TextEncoder:
    t = cfg.text_encoder
    if t.kind == "minilm":
        kwargs: dict[str, Any] = {"pretrained": t.pretrained}
    else:
        kwargs = {"arch": t.clip_arch, "checkpoint": t.checkpoint}
    return build_text_encoder(t.kind, max_prompts=t.max_prompts, max_chars=t.max_chars, **kwargs)


def _classifier(cfg: ModelConfig) -> TextClassifier:
    c = cfg.classifier
    return TextClassifier(
        cfg.hidden_dim, c.kind, c.logit_scale_init, c.logit_scale_max, c.prior_prob
    )


def build_model(cfg: Config | ModelConfig | str, text_encoder: TextEncoder | None = None) -> Mobius:
    """Build the model of a config (or zoo name). ``text_encoder`` reuses an already built one."""
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    m = cfg.model if isinstance(cfg, Config) else cfg
    backbone = build_backbone(
        m.backbone.name,
        pretrained_path=m.backbone.pretrained_path,
        resolution=m.backbone.resolution,
    )
    pixel_decoder = PIXEL_DECODERS[m.pixel_decoder.kind](m, backbone.channels, backbone.strides)
    strides = tuple(pixel_decoder.strides)
    if m.decoder.scales == "single":
        if m.pixel_decoder.bottleneck_stride not in strides:
            raise ConfigError(
                f"model.pixel_decoder.bottleneck_stride={m.pixel_decoder.bottleneck_stride} is not "
                f"a level of the {m.pixel_decoder.kind} pixel decoder (levels: {strides})"
            )
        decode_levels: tuple[int, ...] = (strides.index(m.pixel_decoder.bottleneck_stride),)
    else:
        decode_levels = tuple(range(len(strides)))
    d = m.decoder
    decoder = TransformerDecoder(
        m.hidden_dim,
        d.num_layers,
        d.num_heads,
        d.num_points,
        len(decode_levels),
        d.ffn_dim,
        _classifier(m),
        d.dropout,
        d.shape_grid,
        d.shape_kind,
    )
    selection = LanguageGuidedQuerySelection(m.hidden_dim, d.num_queries, _classifier(m))
    return Mobius(
        backbone,
        text_encoder if text_encoder is not None else build_text_encoder_from_config(m),
        pixel_decoder,
        selection,
        decoder,
        m.hidden_dim,
        decode_levels,
        tuple(m.pixel_mean),
        tuple(m.pixel_std),
        VisualPrompter(m.hidden_dim, m.visual_prompter_grid) if m.visual_prompter else None,
    )


def build_prune_schedule(cfg: Config | ModelConfig) -> PruneSchedule | None:
    """The config's pruning schedule, or None when pruning is disabled."""
    m = cfg.model if isinstance(cfg, Config) else cfg
    p = m.pruning
    if not p.enabled:
        return None
    return prune_schedule(p)


def prune_schedule(p: PruningConfig) -> PruneSchedule:
    """The schedule a pruning config describes, whether or not it is enabled by default."""
    return PruneSchedule.create(p.schedule, p.low, p.high, p.beta, p.min_keep, context=p.context)


def load_trained_model(
    cfg: Config, checkpoint: str | None = None, overrides: Sequence[str] = ()
) -> Mobius:
    """The config's model with ``checkpoint`` loaded, or else the weights shipped for its
    name (unless an ``overrides`` entry, ``KEY=VALUE`` as ``--set`` takes it, changed the
    model, which the shipped weights would not fit), in eval mode."""
    from .training.checkpoint import load_checkpoint, load_model_weights, shipped_checkpoint

    model = build_model(cfg)
    harmless = ("model.text_encoder.", "model.input_size", "model.pruning.")
    changed = any(o.startswith("model.") and not o.startswith(harmless) for o in overrides)
    path = checkpoint or (None if changed else shipped_checkpoint(cfg.name))
    if path:
        load_model_weights(model, load_checkpoint(path), f"{path} (config {cfg.name})")
    return model.eval()
