"""Multi-object tracking metrics on instance masks: CLEAR MOT (MOTA, id switches,
fragmentations) and IDF1.

A ground-truth object and a hypothesis correspond in a frame when their mask IoU is at
least ``iou_threshold`` (0.5). CLEAR MOT keeps last frame's correspondences where they
still hold and assigns the rest by the Hungarian algorithm; an id switch is a ground-truth
object matched to another hypothesis id than the one it last had; a fragmentation is a
ground-truth track that is matched again after frames in which it was present but
unmatched. IDF1 assigns ground-truth ids to hypothesis ids once for the whole sequence,
maximising the frames they correspond in (IDTP), and is 2 IDTP / (GT + hypotheses).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..tracking import mask_iou_matrix

Objects = Sequence[tuple[int, np.ndarray]]  # (id, bool mask [H,W]) of one frame


def tracking_metrics(
    gt_frames: Sequence[Objects], hyp_frames: Sequence[Objects], iou_threshold: float = 0.5
) -> dict[str, float]:
    """Metrics over one or more sequences' frames (lists of (id, mask) per frame).

    Returns ``mota``, ``idf1`` (percent), ``id_switches``, ``fragmentations``, ``fp``,
    ``fn``, ``gt`` (ground-truth objects summed over frames), ``frames``,
    ``id_switches_per_100_frames``. Ids must be unique within a frame."""
    if len(gt_frames) != len(hyp_frames):
        raise ValueError(f"{len(gt_frames)} ground-truth frames but {len(hyp_frames)} results")
    last_match: dict[int, int] = {}  # gt id -> hypothesis id it was last matched to
    prev: dict[int, int] = {}  # correspondences of the previous frame
    lost: set[int] = set()  # gt ids matched before and unmatched since
    pair_frames: dict[tuple[int, int], int] = {}
    fp = fn = idsw = frag = n_gt = n_hyp = 0
    for gt, hyp in zip(gt_frames, hyp_frames):
        gids = [g for g, _ in gt]
        hids = [h for h, _ in hyp]
        for ids, what in ((gids, "ground-truth"), (hids, "hypothesis")):
            if len(set(ids)) != len(ids):
                raise ValueError(f"duplicate {what} ids in one frame: {sorted(ids)}")
        n_gt, n_hyp = n_gt + len(gt), n_hyp + len(hyp)
        iou = mask_iou_matrix(
            np.stack([m for _, m in gt]) if gt else np.zeros((0, 1, 1), bool),
            np.stack([m for _, m in hyp]) if hyp else np.zeros((0, 1, 1), bool),
        )
        ok = iou >= iou_threshold
        for i, j in zip(*np.nonzero(ok)):
            key = (gids[i], hids[j])
            pair_frames[key] = pair_frames.get(key, 0) + 1
        match: dict[int, int] = {}  # row -> column
        for i, g in enumerate(gids):  # keep last frame's correspondences that still hold
            if g in prev and prev[g] in hids:
                j = hids.index(prev[g])
                if ok[i, j] and j not in match.values():
                    match[i] = j
        rows = [i for i in range(len(gids)) if i not in match]
        cols = [j for j in range(len(hids)) if j not in match.values()]
        if rows and cols:
            sub = np.where(ok[np.ix_(rows, cols)], 1.0 - iou[np.ix_(rows, cols)], 1e6)
            for r, c in zip(*linear_sum_assignment(sub)):
                if sub[r, c] < 1e6:
                    match[rows[r]] = cols[c]
        current: dict[int, int] = {}
        for i, j in match.items():
            g, h = gids[i], hids[j]
            if g in last_match and last_match[g] != h:
                idsw += 1
            if g in lost:
                frag += 1
                lost.discard(g)
            last_match[g] = h
            current[g] = h
        for g in gids:
            if g not in current and g in last_match:
                lost.add(g)
        fn += len(gids) - len(match)
        fp += len(hids) - len(match)
        prev = current
    idtp = 0
    if pair_frames:
        g_ids = sorted({g for g, _ in pair_frames})
        h_ids = sorted({h for _, h in pair_frames})
        gain = np.zeros((len(g_ids), len(h_ids)))
        for (g, h), n in pair_frames.items():
            gain[g_ids.index(g), h_ids.index(h)] = n
        r, c = linear_sum_assignment(-gain)
        idtp = int(gain[r, c].sum())
    frames = len(gt_frames)
    return {
        "mota": 100.0 * (1.0 - (fn + fp + idsw) / n_gt) if n_gt else 0.0,
        "idf1": 100.0 * 2 * idtp / (n_gt + n_hyp) if n_gt + n_hyp else 0.0,
        "id_switches": float(idsw),
        "fragmentations": float(frag),
        "fp": float(fp),
        "fn": float(fn),
        "gt": float(n_gt),
        "frames": float(frames),
        "id_switches_per_100_frames": 100.0 * idsw / frames if frames else 0.0,
    }
