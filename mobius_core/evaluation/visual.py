"""Visual-prompt segmentation: one click, or one box, per ground-truth instance.

Every non-crowd instance of every image is prompted twice, once with the interior point
farthest from its boundary (``center_click``) and once with its ground-truth box; the
answer to a prompt is the valid query with the best score for it (the "referring"
post-processing), and the metric is the IoU of that answer's mask with the instance's
mask at the image's own resolution, averaged over instances (``point_miou``,
``box_miou``, percent). The image's category names are the text prompts the pixel
decoder sees (as in the node, where clicks come while text prompts are active), or none
with ``with_text=False``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.coco import CocoDataset
from ..data.transforms import ResizeFlip, collate
from ..data.visual_prompts import center_click, pad_prompts
from ..modeling.pruning import PruneSchedule
from ..postprocess import PostProcessor
from .refer import refer_metrics


def visual_prompt_boxes(
    sample: Any, input_size: tuple[int, int], padded: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Deterministic prompts of a sample's non-crowd instances, in the padded input's frame.

    -> (points as zero-size boxes [N,4], boxes [N,4], both normalised xyxy; GT masks [N,H,W])."""
    keep = ~sample.iscrowd
    masks = sample.masks[keep]
    h, w = sample.image.shape[:2]
    sy, sx = input_size[0] / h / padded[0], input_size[1] / w / padded[1]
    scale = np.array([sx, sy, sx, sy], dtype=np.float64)
    clicks = np.array([center_click(m) * 2 for m in masks], dtype=np.float64).reshape(-1, 4)
    boxes = sample.boxes[keep].astype(np.float64).reshape(-1, 4)
    return (
        torch.from_numpy(clicks * scale).float(),
        torch.from_numpy(boxes * scale).float(),
        masks,
    )


@torch.no_grad()
def evaluate_visual(
    model: Any,
    dataset: CocoDataset,
    short_side: int = 800,
    max_size: int = 1333,
    prune: PruneSchedule | None = None,
    with_text: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """-> {"point_miou", "box_miou", "point_p50", "box_p50", "visual_prompts"} (percent)."""
    model.eval()
    text = model.encode_text(dataset.prompts) if with_text else model.text_encoder.empty()
    transform = ResizeFlip((short_side,), max_size, 0.0)
    post = PostProcessor()
    pairs: dict[str, list] = {"point": [], "box": []}
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="eval visual", unit="image")
    for i in indices:
        sample = dataset[i]
        if sample.masks is None or not (~sample.iscrowd).any():
            continue
        images, _, sizes = collate([transform(sample)])
        padded = (images.shape[-2], images.shape[-1])
        clicks, boxes, gt = visual_prompt_boxes(sample, sizes[0], padded)
        for kind, prompts in (("point", clicks), ("box", boxes)):
            visual = pad_prompts([prompts], classify_text=False)
            out = model(model.normalize(images), text, prune=prune, visual=visual)
            names = tuple(f"{kind} {j}" for j in range(len(prompts)))
            (inst,) = post(out, "referring", [sample.image.shape[:2]], sizes, names)
            for j in range(len(prompts)):
                hit = np.flatnonzero(inst.labels == j)
                pairs[kind].append((inst.masks[hit[0]] if len(hit) else None, gt[j]))
    if not pairs["point"]:
        raise ValueError(
            f"--task visual found no instance with a mask in {dataset.ann_file}: it prompts "
            "with points and boxes inside instance masks (box-only datasets cannot be used)"
        )
    metrics: dict[str, float] = {"visual_prompts": float(len(pairs["point"]))}
    for kind, got in pairs.items():
        m = refer_metrics(got)
        metrics[f"{kind}_miou"] = m["refer_miou"]
        metrics[f"{kind}_p50"] = m["refer_p50"]
    return metrics
