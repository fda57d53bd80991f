"""Vision encoders: timm MobileNetV4 / ResNet-50 and FasterViT-0..3, as S2..S5 feature maps.

Every backbone maps ``images [B,3,H,W]`` to :class:`~mobius_core.types.BackboneFeatures`
holding four maps ``[B,C_i,H_i,W_i]`` at strides 4, 8, 16, 32 (S2..S5, finest first). The
channels and strides are read from the underlying network when it is built (timm's
``feature_info``; the FasterViT modules themselves), never written down per model.

For inputs whose sides are multiples of 32, ``H_i = H / stride_i`` exactly. Other sizes give
``ceil(H / stride_i)`` for most networks (timm's anti-aliased ``*_aa_*``/``*_blur_*``
MobileNetV4 variants round down instead), so pad images to a multiple of 32 first.

Weights are never downloaded. ``pretrained_path`` names a local file: a state_dict saved with
``torch.save`` (``.pth``, ``.pt``, ``.pth.tar``, ``.bin``, ...; a raw state_dict or a dict with
a ``"state_dict"`` or ``"model"`` entry) or a ``.safetensors`` file, in the key layout of the
original network (e.g. timm's or NVIDIA's ImageNet checkpoints) or of this module's own
``state_dict()``. See :meth:`Backbone.load_pretrained`.

FasterViT input sizes: the hierarchical-attention stage (stride 16) builds its carrier-token
grid for one fixed square input size, and the windowed stages need their feature sides to be
multiples of the window size (7). So a FasterViT is built for one square size that is a
multiple of ``32 * 7 = 224`` (the rule is computed from the model's strides and window sizes);
:class:`FasterViTBackbone` rounds the requested ``resolution`` up to that size, zero-pads
every smaller input (bottom/right) to it and crops the feature maps back. Inputs larger than
the built size raise a ``ValueError`` naming the resolution to build with.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..types import BackboneFeatures

__all__ = [
    "FASTERVIT_NAMES",
    "TARGET_STRIDES",
    "Backbone",
    "BackboneCheckpointError",
    "CheckpointLoadResult",
    "FasterViTBackbone",
    "TimmBackbone",
    "backbone_names",
    "build_backbone",
]

logger = logging.getLogger(__name__)

TARGET_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
"""Strides of S2, S3, S4, S5."""

FASTERVIT_NAMES: tuple[str, ...] = ("fastervit_0", "fastervit_1", "fastervit_2", "fastervit_3")

_SAFETENSORS_SUFFIXES = (".safetensors",)


class BackboneCheckpointError(ValueError):
    """A local backbone weights file cannot be read or does not fit the backbone.

    The message names the file and what is wrong (unreadable, no matching key, shapes)."""


@dataclass(frozen=True)
class CheckpointLoadResult:
    """What :meth:`Backbone.load_pretrained` did with a weights file.

    loaded: number of tensors copied into the backbone.
    missing: backbone tensors the file did not provide (they keep their initial values).
    unexpected: file tensors that are not part of the backbone (ignored).
    dropped: classifier/head tensors removed on purpose before matching.
    """

    path: Path
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    dropped: tuple[str, ...]


# ---------------------------------------------------------------------------
# Base class


class Backbone(nn.Module):
    """Base class: ``images [B,3,H,W] -> BackboneFeatures`` with four maps S2..S5.

    Attributes:
        model_name: the name the backbone was built from (e.g. ``"resnet50"``).
        channels: ``C_i`` of S2, S3, S4, S5, read from the network.
        strides: stride of S2, S3, S4, S5 relative to the input, read from the network
            (always ``(4, 8, 16, 32)``).
        body: the wrapped network; its ``state_dict`` keys are those of the original
            network's checkpoints (minus the classification head).
    """

    #: checkpoint key prefixes of the classification head, dropped before loading
    _head_prefixes: tuple[str, ...] = ()
    #: key suffixes of buffers the network derives from its geometry (not loaded, never
    #: reported missing)
    _derived_suffixes: tuple[str, ...] = ()

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.model_name = model_name
        self.channels: tuple[int, ...] = ()
        self.strides: tuple[int, ...] = ()
        self.body: nn.Module = nn.Identity()

    def forward(self, images: Tensor) -> BackboneFeatures:
        """images: [B,3,H,W] normalised pixels -> maps [B,C_i,H/s_i,W/s_i] for S2..S5."""
        raise NotImplementedError

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"backbone {self.model_name} expects images [B,3,H,W], got {tuple(images.shape)}"
            )

    def _check_levels(self, channels: list[int], strides: list[int]) -> None:
        if tuple(strides) != TARGET_STRIDES or len(channels) != len(TARGET_STRIDES):
            raise ValueError(
                f"backbone {self.model_name} gives levels at strides {tuple(strides)}, "
                f"expected {TARGET_STRIDES}"
            )
        self.channels = tuple(int(c) for c in channels)
        self.strides = tuple(int(s) for s in strides)

    # -- checkpoints -------------------------------------------------------

    def load_pretrained(self, path: str | os.PathLike[str]) -> CheckpointLoadResult:
        """Load weights for :attr:`body` from a local file (never downloads anything).

        Accepts a state_dict saved with ``torch.save`` (read with ``weights_only=True``; a raw
        state_dict or a dict with ``"state_dict"``/``"model"``) or a ``.safetensors`` file.
        Keys may carry a ``module.`` (DDP) prefix and may be in the layout of the original
        network or of this module's ``state_dict()`` (``body.`` prefix). Classification-head
        tensors are dropped. Loading is non-strict, but raises
        :class:`BackboneCheckpointError` naming the file when no tensor matches the backbone
        or when any matching tensor has the wrong shape; missing tensors are logged.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            BackboneCheckpointError: unreadable file, no matching key or shape mismatch.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone weights file for {self.model_name} not found: {str(path)!r}. "
                "Weights are never downloaded: pass the path of a local state_dict file "
                "(.pth/.pt/.bin or .safetensors), or pretrained_path=None for random init."
            )
        state = _read_state_dict(path)
        own = self.body.state_dict()
        state = _strip_prefixes(state, own)

        dropped = tuple(k for k in state if k.startswith(self._head_prefixes))
        derived = tuple(k for k in state if k.endswith(self._derived_suffixes))
        skip = set(dropped) | set(derived)
        state = {k: v for k, v in state.items() if k not in skip}

        matched = [k for k in state if k in own]
        unexpected = tuple(k for k in state if k not in own)
        if not matched:
            raise BackboneCheckpointError(
                f"no tensor of {str(path)!r} matches backbone {self.model_name}: the file has "
                f"{len(state)} usable keys (e.g. {_preview(list(state))}), the backbone "
                f"expects keys like {_preview(list(own))}"
            )
        wrong = [
            f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(own[k].shape)}"
            for k in matched
            if tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if wrong:
            raise BackboneCheckpointError(
                f"{len(wrong)} tensors of {str(path)!r} have the wrong shape for backbone "
                f"{self.model_name} (a different model variant?): " + "; ".join(wrong[:5])
            )

        self.body.load_state_dict({k: state[k] for k in matched}, strict=False)
        missing = tuple(
            k
            for k in own
            if k not in state
            and not k.endswith(self._derived_suffixes)
            and not k.endswith("num_batches_tracked")
        )
        if missing:
            logger.warning(
                "%s: %d backbone tensors of %s are not in the file and keep their "
                "initial values: %s",
                path,
                len(missing),
                self.model_name,
                _preview(list(missing)),
            )
        if unexpected:
            logger.info(
                "%s: ignored %d tensors that are not part of backbone %s: %s",
                path,
                len(unexpected),
                self.model_name,
                _preview(list(unexpected)),
            )
        return CheckpointLoadResult(path, len(matched), missing, unexpected, dropped)


def _preview(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a local weights file, as a flat {key: tensor} dict."""
    if path.name.endswith(_SAFETENSORS_SUFFIXES):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with timm
            raise BackboneCheckpointError(
                f"cannot read {str(path)!r}: the safetensors package is not installed"
            ) from e
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:  # any parse failure means a bad file
            raise BackboneCheckpointError(
                f"cannot read backbone weights {str(path)!r} as safetensors: {e}"
            ) from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unpickling failure means a bad file
            hint = ""
            if "weights_only" in str(e) or "Weights only load failed" in str(e):
                hint = (
                    " The file holds non-tensor Python objects (e.g. training arguments); "
                    "if you trust it, re-save only its weights: "
                    "torch.save(torch.load(p, weights_only=False)['state_dict'], new_p)."
                )
            raise BackboneCheckpointError(
                f"cannot read backbone weights {str(path)!r} with torch.load(weights_only="
                f"True): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}.{hint}"
            ) from e

    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise BackboneCheckpointError(
            f"{str(path)!r} does not hold a state_dict (found {type(obj).__name__}); expected "
            "a dict of tensors, or a dict with a 'state_dict' or 'model' entry"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise BackboneCheckpointError(f"{str(path)!r} holds no tensors")
    return tensors


def _strip_prefixes(state: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove a DDP ``module.`` prefix and the wrapper prefix (``body.``, ``backbone.body.``)
    that makes most keys match ``own``; keys without the chosen prefix are kept as they are."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    best, best_hits = "", sum(k in own for k in state)
    for prefix in ("body.", "backbone.body.", "backbone."):
        hits = sum(k.startswith(prefix) and k[len(prefix) :] in own for k in state)
        if hits > best_hits:
            best, best_hits = prefix, hits
    if not best:
        return state
    return {k.removeprefix(best): v for k, v in state.items()}


# ---------------------------------------------------------------------------
# timm: MobileNetV4 variants and ResNet-50


def _timm_feature_levels(name: str) -> list[dict[str, Any]]:
    """All feature levels timm declares for ``name`` (dicts with num_chs/reduction/module).

    The model is instantiated on the meta device (no memory, no init cost) to read them."""
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False)
    except (RuntimeError, NotImplementedError, TypeError):  # a model that cannot go to meta
        probe = timm.create_model(name, pretrained=False)
    info = getattr(probe, "feature_info", None)
    if not info:
        raise ValueError(f"timm model {name!r} declares no feature_info; it cannot be a backbone")
    return [dict(level) for level in info]


def _as_prefixes(classifier: Any) -> tuple[str, ...]:
    if not classifier:
        return ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


class TimmBackbone(Backbone):
    """A timm CNN (every ``mobilenetv4_*`` variant, ``resnet50``) as S2..S5.

    Built with ``timm.create_model(name, pretrained=False, features_only=True,
    out_indices=...)``, taking the feature levels whose reduction is 4, 8, 16 and 32 in
    timm's ``feature_info`` (MobileNetV4 and ResNet-50 also have a stride-2 level first,
    which is skipped).

    Args:
        name: a timm model name, e.g. ``"mobilenetv4_conv_medium"`` or ``"resnet50"``.
        pretrained_path: optional local weights file (see :meth:`Backbone.load_pretrained`);
            a full timm classification checkpoint works (its head is dropped).

    Raises:
        ValueError: unknown timm model, or one without levels at strides 4, 8, 16 and 32
            (the message names the model and the strides it has).

    Shapes: ``images [B,3,H,W] -> maps [B,C_i,H/s_i,W/s_i]``, ``s_i`` in (4, 8, 16, 32).
    """

    def __init__(self, name: str, pretrained_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(name)
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}")
        levels = _timm_feature_levels(name)
        have = [int(level["reduction"]) for level in levels]
        # the last level with each stride: the deepest features at that resolution
        index_of = {r: i for i, r in enumerate(have)}
        lacking = [s for s in TARGET_STRIDES if s not in index_of]
        if lacking:
            raise ValueError(
                f"timm model {name!r} has feature levels at strides {tuple(have)}; a backbone "
                f"needs {TARGET_STRIDES} (missing {tuple(lacking)})"
            )
        out_indices = tuple(index_of[s] for s in TARGET_STRIDES)
        self.body = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=out_indices
        )
        info = self.body.feature_info
        self._check_levels(list(info.channels()), list(info.reduction()))
        self.out_indices = out_indices
        self._head_prefixes = _as_prefixes(timm.get_pretrained_cfg_value(name, "classifier"))
        if pretrained_path is not None:
            self.load_pretrained(pretrained_path)

    def forward(self, images: Tensor) -> BackboneFeatures:
        """images: [B,3,H,W] -> BackboneFeatures with maps [B,C_i,H/s_i,W/s_i] for S2..S5."""
        self._check_images(images)
        return BackboneFeatures(maps=list(self.body(images)), strides=self.strides)


# ---------------------------------------------------------------------------
# FasterViT-0..3 (NVIDIA's `fastervit` package)


def _fastervit_module() -> Any:
    with warnings.catch_warnings():  # fastervit imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        import fastervit.models.faster_vit as fv
    return fv


def _conv_stride(module: nn.Module) -> int:
    return math.prod(int(m.stride[0]) for m in module.modules() if isinstance(m, nn.Conv2d))


def _conv_out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


class FasterViTBackbone(Backbone):
    """FasterViT-0..3 (``fastervit.create_model("faster_vit_{i}_224", pretrained=False)``).

    S2..S5 are the outputs of the four stages *before* each stage's downsampling conv
    (FasterViT applies ``Downsample`` at the end of stages 1-3): ``dim * 2**i`` channels at
    stride ``4 * 2**i``. The classification head and the final norm are dropped.

    Input size rule: the network is built for one square size ``input_size`` that must be a
    multiple of ``size_multiple`` = lcm over stages of (stride x window size for windowed
    stages, stride otherwise), read from the model: 32 * 7 = 224 for FasterViT-0..3. The
    hierarchical-attention stage builds its carrier-token grid for exactly that size, so it
    cannot run on other sizes. ``resolution`` is rounded up to the nearest valid size
    (e.g. 128 -> 224, 384 -> 448, 800 -> 896); in ``forward`` every input with
    ``H, W <= input_size`` is zero-padded at the bottom/right to ``input_size x input_size``
    and the maps are cropped back to ``ceil(H/s_i) x ceil(W/s_i)``. Padded pixels take part
    in attention and BatchNorm statistics, so build with the size you run at. Larger inputs
    raise ``ValueError``.

    Args:
        name: ``"fastervit_0"`` .. ``"fastervit_3"``.
        pretrained_path: optional local weights file, e.g. NVIDIA's ImageNet
            ``fastervit_{i}_224_1k.pth.tar`` re-saved as a plain state_dict (see
            :meth:`Backbone.load_pretrained`). Geometry buffers (relative position tables
            and cached biases) are recomputed, not loaded, so 224-trained weights load into
            a model built for any valid size.
        resolution: largest input side to accept; the model is built for the nearest valid
            size at or above it (:attr:`input_size`).
        drop_path_rate: stochastic depth; ``None`` keeps FasterViT's default (0.2-0.3).

    Shapes: ``images [B,3,H,W] -> maps [B,C_i,ceil(H/s_i),ceil(W/s_i)]``.
    """

    _head_prefixes = ("head.", "norm.")
    _derived_suffixes = ("relative_coords_table", "relative_position_index", "relative_bias")

    def __init__(
        self,
        name: str,
        pretrained_path: str | os.PathLike[str] | None = None,
        resolution: int = 224,
        drop_path_rate: float | None = None,
    ) -> None:
        super().__init__(name)
        match = re.fullmatch(r"fastervit_([0-3])", name)
        if match is None:
            raise ValueError(
                f"unknown FasterViT backbone {name!r}; allowed: {', '.join(FASTERVIT_NAMES)}"
            )
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        fv = _fastervit_module()
        self._window_partition = fv.window_partition
        self._window_reverse = fv.window_reverse
        self._pos_emb_types = (fv.PosEmbMLPSwinv1D, fv.PosEmbMLPSwinv2D)
        arch = f"faster_vit_{match.group(1)}_224"
        native = 224  # the resolution in the entry-point name: always a valid size

        body = self._create(arch, max(resolution, native), drop_path_rate)
        self.size_multiple = self._size_multiple(body)
        size = self.size_multiple * math.ceil(max(resolution, native) / self.size_multiple)
        if size != max(resolution, native):
            body = self._create(arch, size, drop_path_rate)
        self.input_size: int = size
        body.head = nn.Identity()
        body.norm = nn.Identity()
        self.body = body
        channels, strides = self._levels(body)
        self._check_levels(channels, strides)
        if pretrained_path is not None:
            self.load_pretrained(pretrained_path)

    @staticmethod
    def _create(arch: str, resolution: int, drop_path_rate: float | None) -> nn.Module:
        import fastervit

        kwargs: dict[str, Any] = {"pretrained": False, "resolution": resolution, "num_classes": 0}
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        with warnings.catch_warnings():  # torch.meshgrid indexing warning inside fastervit
            warnings.simplefilter("ignore", UserWarning)
            return fastervit.create_model(arch, **kwargs)

    @staticmethod
    def _levels(body: nn.Module) -> tuple[list[int], list[int]]:
        """(channels, strides) of each stage's output before its downsample, read from the
        convs of the patch embedding and of the downsampling blocks."""
        stride = _conv_stride(body.patch_embed)
        ch = _conv_out_channels(body.patch_embed)
        channels, strides = [], []
        for level in body.levels:
            channels.append(ch)
            strides.append(stride)
            if level.downsample is not None:
                stride *= _conv_stride(level.downsample)
                ch = _conv_out_channels(level.downsample)
        return channels, strides

    @classmethod
    def _size_multiple(cls, body: nn.Module) -> int:
        """Input sides must be multiples of this: every stage's feature side must be a
        multiple of its attention window (windowed stages) or at least integral."""
        _, strides = cls._levels(body)
        step = 1
        for level, stride in zip(body.levels, strides):
            need = stride * int(level.window_size) if level.transformer_block else stride
            step = math.lcm(step, need)
        return step

    def forward(self, images: Tensor) -> BackboneFeatures:
        """images: [B,3,H,W] with H, W <= input_size -> BackboneFeatures with maps
        [B,C_i,ceil(H/s_i),ceil(W/s_i)] for S2..S5 (inputs padded to input_size inside)."""
        self._check_images(images)
        h, w = int(images.shape[-2]), int(images.shape[-1])
        size = self.input_size
        if h > size or w > size:
            need = self.size_multiple * math.ceil(max(h, w) / self.size_multiple)
            raise ValueError(
                f"backbone {self.model_name} was built for inputs up to {size}x{size}, got "
                f"{h}x{w}. FasterViT runs on one square size, a multiple of "
                f"{self.size_multiple} (32 x attention window), fixed at construction; "
                f"build it with resolution={need} (the nearest valid size)"
            )
        x = images
        if h != size or w != size:
            x = F.pad(x, (0, size - w, 0, size - h))
        x = self.body.patch_embed(x)
        maps = []
        for level in self.body.levels:
            x = self._run_stage(level, x)
            maps.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
        self._release_cached_pos_emb()
        maps = [
            m[..., : -(-h // s), : -(-w // s)] if (h != size or w != size) else m
            for m, s in zip(maps, self.strides)
        ]
        return BackboneFeatures(maps=maps, strides=self.strides)

    def _run_stage(self, level: nn.Module, x: Tensor) -> Tensor:
        """``FasterViTLayer.forward`` without the trailing downsample: [B,C,h,w] -> same."""
        ct = level.global_tokenizer(x) if level.do_gt else None
        b, _, hh, ww = x.shape
        if level.transformer_block:
            x = self._window_partition(x, level.window_size)
        for block in level.blocks:
            x, ct = block(x, ct)
        if level.transformer_block:
            x = self._window_reverse(x, level.window_size, hh, ww, b)
        return x

    def _release_cached_pos_emb(self) -> None:
        """FasterViT caches each forward's positional biases on the modules (``pos_emb`` and
        the ``relative_bias`` buffer). In training these are non-leaf tensors, which would
        break ``copy.deepcopy`` (EMA copies) and keep graphs alive; they are recomputed on
        every forward outside deploy mode, so drop/detach them."""
        for m in self.body.modules():
            if isinstance(m, self._pos_emb_types) and not m.deploy:
                m.pos_emb = None
                if m.relative_bias.grad_fn is not None:
                    m.relative_bias = m.relative_bias.detach()


# ---------------------------------------------------------------------------
# Factory


def _timm_mobilenetv4_names() -> list[str]:
    return sorted(timm.list_models("mobilenetv4*"))


def backbone_names() -> list[str]:
    """Every name :func:`build_backbone` accepts."""
    return [*_timm_mobilenetv4_names(), "resnet50", *FASTERVIT_NAMES]


def build_backbone(
    name: str,
    pretrained_path: str | os.PathLike[str] | None = None,
    *,
    resolution: int | None = None,
) -> Backbone:
    """Build a backbone by name.

    ``mobilenetv4_*`` (any timm MobileNetV4 variant) and ``resnet50`` ->
    :class:`TimmBackbone`; ``fastervit_0`` .. ``fastervit_3`` -> :class:`FasterViTBackbone`.
    ``resolution`` is the largest input side for FasterViT (default 224; see its input-size
    rule) and is ignored by the timm CNNs, which take any size. ``pretrained_path`` is a
    local weights file; nothing is ever downloaded.

    Raises:
        ValueError: any other name (the message lists the allowed names).
    """
    if name.startswith("mobilenetv4"):
        allowed = _timm_mobilenetv4_names()
        if name not in allowed:
            raise ValueError(
                f"unknown MobileNetV4 backbone {name!r}; timm has: {', '.join(allowed)}"
            )
        return TimmBackbone(name, pretrained_path)
    if name == "resnet50":
        return TimmBackbone(name, pretrained_path)
    if name in FASTERVIT_NAMES:
        kwargs = {} if resolution is None else {"resolution": resolution}
        return FasterViTBackbone(name, pretrained_path, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(backbone_names())}")
