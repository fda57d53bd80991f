"""Training data from several datasets and tasks, mixed with per-dataset ratios.

The paper trains one stage on many sources at once (its Table 5): instance datasets with
masks (COCO, LVIS), box-only detection datasets (Objects365-style, no mask loss),
referring-expression datasets (RefCOCO/+/g "refs": one expression -> one instance) and
category-agnostic ones (SA-1B/UVO-style, every instance an "object"). Each source yields
``TrainItem``s: a sample and the prompts its labels index.

A batch comes from one source (drawn with probability proportional to its ratio), so the
prompts of a batch never turn another dataset's unlabeled objects into negatives. Which
source and which items a step uses are a function of ``(seed, step)`` only, so a resumed
run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .coco import CocoDataset, DatasetError, Sample

TASKS: tuple[str, ...] = ("category", "referring", "agnostic")
AGNOSTIC_PROMPT = "object"


@dataclass
class TrainItem:
    """One training image: ``sample.labels`` index ``prompts``; ``task`` is one of TASKS."""

    sample: Sample
    prompts: tuple[str, ...]
    task: str


class TrainSource(Protocol):
    """What the mixer needs of a source: a length and seeded items."""

    def __len__(self) -> int: ...

    def item(self, index: int, rng: np.random.Generator) -> TrainItem: ...


class CategorySource:
    """A COCO-format dataset (with masks, or box-only with ``with_masks=False``) whose
    category names are the prompts."""

    task = "category"

    def __init__(self, dataset: CocoDataset) -> None:
        self.dataset = dataset
        self.prompts = tuple(dataset.prompts)

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int, rng: np.random.Generator) -> TrainItem:
        return TrainItem(self.dataset[index], self.prompts, self.task)


class AgnosticSource(CategorySource):
    """A COCO-format dataset whose instances are all "object" (SA-1B/UVO-style)."""

    task = "agnostic"

    def __init__(self, dataset: CocoDataset) -> None:
        super().__init__(dataset)
        self.prompts = (AGNOSTIC_PROMPT,)

    def item(self, index: int, rng: np.random.Generator) -> TrainItem:
        sample = self.dataset[index]
        return TrainItem(
            replace(sample, labels=np.zeros_like(sample.labels)), self.prompts, "agnostic"
        )


class ReferringSource:
    """RefCOCO-style referring data: ``refs.json`` is a list of refs
    ``{"ref_id", "image_id", "ann_id", "sentences": [{"sent": ...}, ...]}`` over a COCO-format
    annotation file. One item per ref: its image with only the referent, and one of its
    sentences (drawn by the item's rng) as the single prompt."""

    task = "referring"

    def __init__(self, dataset: CocoDataset, refs_file: str | Path) -> None:
        self.dataset = dataset
        self.refs_file = Path(refs_file)
        if not self.refs_file.is_file():
            raise DatasetError(f"refs file {self.refs_file} does not exist")
        try:
            refs = json.loads(self.refs_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.refs_file} is not valid JSON: {exc}") from exc
        if not isinstance(refs, list):
            raise DatasetError(
                f"{self.refs_file} must hold a list of refs, got {type(refs).__name__}"
            )
        self._row = {info["id"]: i for i, info in enumerate(dataset.images)}
        self.refs: list[tuple[int, int, tuple[str, ...]]] = []
        for ref in refs:
            self.refs.append(self._check(ref))

    def _check(self, ref: Any) -> tuple[int, int, tuple[str, ...]]:
        where = f"{self.refs_file}: ref {ref.get('ref_id') if isinstance(ref, dict) else ref!r}"
        if not isinstance(ref, dict) or not {"image_id", "ann_id", "sentences"} <= set(ref):
            raise DatasetError(f"{where} needs 'image_id', 'ann_id' and 'sentences'")
        image_id, ann_id = ref["image_id"], ref["ann_id"]
        if image_id not in self._row:
            raise DatasetError(
                f"{where} refers to image_id {image_id}, not in {self.dataset.ann_file}"
            )
        if not any(a.get("id") == ann_id for a in self.dataset.anns[image_id]):
            raise DatasetError(
                f"{where} refers to ann_id {ann_id}, not an annotation of image {image_id}"
            )
        sentences = tuple(
            str(s["sent"]).strip()
            for s in ref["sentences"]
            if isinstance(s, dict) and s.get("sent")
        )
        if not any(sentences):
            raise DatasetError(f"{where} has no non-empty sentence")
        return int(image_id), int(ann_id), tuple(s for s in sentences if s)

    def __len__(self) -> int:
        return len(self.refs)

    def item(self, index: int, rng: np.random.Generator) -> TrainItem:
        image_id, ann_id, sentences = self.refs[index]
        sample = self.dataset[self._row[image_id]]
        keep = sample.ann_ids == ann_id
        if not keep.any():
            raise DatasetError(
                f"{self.refs_file}: annotation {ann_id} of image {image_id} has an empty box"
            )
        sample = replace(
            sample,
            boxes=sample.boxes[keep],
            labels=np.zeros(int(keep.sum()), dtype=np.int64),
            masks=sample.masks[keep] if sample.masks is not None else None,
            iscrowd=np.zeros(int(keep.sum()), dtype=bool),
            ann_ids=sample.ann_ids[keep],
        )
        sentence = sentences[int(rng.integers(len(sentences)))]
        return TrainItem(sample, (sentence,), "referring")


@dataclass
class SourceSpec:
    """One entry of a datasets file (see :func:`load_sources`)."""

    name: str
    source: TrainSource
    ratio: float


class MixedDataset:
    """Sources with ratios; ``items(step, batch_size, seed)`` is deterministic.

    With one source, batches walk a seeded permutation per epoch (every image once per
    epoch); with several, each step first draws its source by ratio, then its items
    uniformly.
    """

    def __init__(self, specs: Sequence[SourceSpec]) -> None:
        if not specs:
            raise ValueError("a mixed dataset needs at least one source")
        for s in specs:
            if s.ratio <= 0:
                raise ValueError(f"source {s.name!r}: ratio must be > 0, got {s.ratio}")
            if len(s.source) == 0:
                raise ValueError(f"source {s.name!r} is empty")
        self.specs = list(specs)
        ratios = np.asarray([s.ratio for s in specs], dtype=np.float64)
        self.probabilities = ratios / ratios.sum()

    def __len__(self) -> int:
        return sum(len(s.source) for s in self.specs)

    @property
    def prompts(self) -> list[str]:
        """The prompts of the first source's category names (single-dataset training)."""
        first = self.specs[0].source
        return list(getattr(first, "prompts", ()))

    def source_of(self, step: int, seed: int) -> int:
        """Index of the source that batch ``step`` comes from."""
        if len(self.specs) == 1:
            return 0
        rng = np.random.default_rng([seed, step, 7])
        return int(rng.choice(len(self.specs), p=self.probabilities))

    def indices(self, step: int, batch_size: int, seed: int) -> tuple[int, list[int]]:
        """(source index, item indices) of batch ``step``."""
        k = self.source_of(step, seed)
        n = len(self.specs[k].source)
        if len(self.specs) == 1:
            out = []
            for g in range(step * batch_size, (step + 1) * batch_size):
                epoch, pos = divmod(g, n)
                out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[pos]))
            return k, out
        rng = np.random.default_rng([seed, step, 11])
        return k, [int(i) for i in rng.integers(n, size=batch_size)]

    def items(
        self, step: int, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)
    ) -> list[TrainItem]:
        """The items of batch ``step``; with ``shard=(r, n)`` only positions r, r+n, ...
        (one process's part of a distributed batch), each exactly as in the whole batch."""
        k, idx = self.indices(step, batch_size, seed)
        source = self.specs[k].source
        r, n = shard
        return [
            source.item(idx[j], np.random.default_rng([seed, step, j, 13]))
            for j in range(r, len(idx), n)
        ]


def merge_prompts(prompt_sets: Sequence[tuple[str, ...]]) -> tuple[list[str], list[int]]:
    """One prompt list for a batch and each item's label offset into it.

    Identical prompt sets (a category dataset's names, or the same sentence twice) are
    shared; the others (referring sentences) are appended.
    """
    merged: list[str] = []
    offsets: list[int] = []
    seen: dict[tuple[str, ...], int] = {}
    for prompts in prompt_sets:
        if prompts in seen:
            offsets.append(seen[prompts])
            continue
        offsets.append(len(merged))
        seen[prompts] = len(merged)
        merged.extend(prompts)
    return merged, offsets


def build_source(entry: dict[str, Any], base: Path | None = None) -> SourceSpec:
    """A source from one datasets-file entry:
    ``{name, ann, images, task: category|referring|agnostic, ratio: 1.0, masks: true,
    refs: refs.json (referring)}``; relative paths are relative to ``base``."""
    known = {"name", "ann", "images", "task", "ratio", "masks", "refs"}
    unknown = set(entry) - known
    if unknown:
        raise ValueError(
            f"dataset entry {entry.get('name')!r}: unknown keys {sorted(unknown)}; "
            f"known: {sorted(known)}"
        )
    for key in ("name", "ann", "images"):
        if key not in entry:
            raise ValueError(f"dataset entry {entry!r} needs {key!r}")
    task = entry.get("task", "category")
    if task not in TASKS:
        raise ValueError(f"dataset {entry['name']!r}: unknown task {task!r}; use one of {TASKS}")

    def path(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() or base is None else base / q

    dataset = CocoDataset(path(entry["ann"]), path(entry["images"]), bool(entry.get("masks", True)))
    if task == "referring":
        if "refs" not in entry:
            raise ValueError(f"dataset {entry['name']!r}: task referring needs 'refs: refs.json'")
        source: TrainSource = ReferringSource(dataset, path(entry["refs"]))
    elif task == "agnostic":
        source = AgnosticSource(dataset)
    else:
        source = CategorySource(dataset)
    return SourceSpec(str(entry["name"]), source, float(entry.get("ratio", 1.0)))


def load_sources(file: str | Path) -> MixedDataset:
    """A mixed dataset from a YAML (or JSON) list of entries (see :func:`build_source`)."""
    import yaml

    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"datasets file {file} does not exist")
    entries = yaml.safe_load(file.read_text())
    if isinstance(entries, dict) and "datasets" in entries:
        entries = entries["datasets"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{file} must hold a non-empty list of dataset entries")
    return MixedDataset([build_source(e, file.parent) for e in entries])
