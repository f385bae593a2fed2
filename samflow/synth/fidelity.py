"""The fidelity stage (a Ray Data actor): is a generated image true to its masks?

The run's own segment model (SAM through samflow's runner) is prompted with each conditioning
mask's box and, separately, its innermost pixel (SAM's best of three masks); a mask's IoU is the
better of the two predictions' IoUs with it, and the image's fidelity their mean. An image is
kept when its fidelity is at least ``min_fidelity`` (and, if set, its CLIP score at least
``min_clip_score``); a dropped one keeps its reason. CLIP (samflow's clip family) scores every
image against its prompt: the cosine of their unit embeddings.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from scipy import ndimage

from samflow.models.loading.registry import load_model
from samflow.schemas import rle
from samflow.synth.generate import GENERATED, STAGE_INFO

VERIFIED = pa.schema([
    *GENERATED,
    ("mask_ious", pa.list_(pa.float32())), ("fidelity", pa.float32()), ("clip_score", pa.float32()),
    ("kept", pa.bool_()), ("drop_reason", pa.string()), ("verify_info", STAGE_INFO),
])
LOW_FIDELITY = "low_fidelity"
LOW_CLIP = "low_clip_score"


def inner_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from its border (a point surely inside it)."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)


def xyxy(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class FidelityStage:
    def __init__(self, segment_uri: str, clip_uri: str, min_fidelity: float, min_clip_score: float | None,
                 fetch: Any = None, hashes: dict[str, str | None] | None = None) -> None:
        """``fetch(uri, sha256=...)`` resolves object-store model URIs to local copies first."""
        hashes = hashes or {}
        local = (lambda uri, sha256=None: uri) if fetch is None else fetch
        self.sam = load_model("sam", local(segment_uri, sha256=hashes.get("segment")))
        self.clip = load_model("clip", local(clip_uri, sha256=hashes.get("clip")))
        self.min_fidelity = min_fidelity
        self.min_clip_score = min_clip_score
        self.info = {"model": f"{segment_uri} + {clip_uri}", "checkpoint_sha256": self.sam.checkpoint_sha256}

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        rows = batch.to_pylist()
        ready = [i for i, row in enumerate(rows) if not row["error"]]
        scores: dict[int, tuple[list[float], float]] = {}
        if ready:
            try:
                images = [np.asarray(Image.open(io.BytesIO(rows[i]["image"])).convert("RGB")) for i in ready]
                masks = [[rle.decode(m["segmentation"]) for m in rows[i]["masks"]] for i in ready]
                ious = self.mask_ious(images, masks)
                clip = self.clip_scores(images, [rows[i]["prompt"] for i in ready])
                scores = {i: (per_mask, score) for i, per_mask, score in zip(ready, ious, clip, strict=True)}
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its candidates, not the run
                for i in ready:
                    rows[i]["error"] = f"verify: {type(exc).__name__}: {exc}"
        info = dict(self.info, busy_s=(time.perf_counter() - started) / max(1, len(rows)), pid=os.getpid())
        out = [self._verdict(row, scores.get(i), info) for i, row in enumerate(rows)]
        return pa.Table.from_pylist(out, schema=VERIFIED)

    def _verdict(self, row: dict[str, Any], scores: tuple[list[float], float] | None, info: dict) -> dict[str, Any]:
        if scores is None:
            return dict(row, mask_ious=[], fidelity=None, clip_score=None, kept=False,
                        drop_reason=row["error"].split(":", 1)[0] or "error", verify_info=info)
        per_mask, clip = scores
        fidelity = float(np.mean(per_mask))
        reason = ""
        if fidelity < self.min_fidelity:
            reason = LOW_FIDELITY
        elif self.min_clip_score is not None and clip < self.min_clip_score:
            reason = LOW_CLIP
        return dict(row, mask_ious=per_mask, fidelity=fidelity, clip_score=clip, kept=not reason,
                    drop_reason=reason, verify_info=info)

    def mask_ious(self, images: Sequence[np.ndarray], masks: Sequence[Sequence[np.ndarray]]) -> list[list[float]]:
        """Per image, per conditioning mask: the better IoU of the box- and point-prompted masks."""
        encoding = self.sam.encode(images)
        out = []
        for index, targets in enumerate(masks):
            boxes = torch.tensor([[xyxy(m) for m in targets]], dtype=torch.float32)
            points = torch.tensor([[inner_point(m) for m in targets]], dtype=torch.float32)
            box_logits, _ = self.sam.decode(encoding, [index], boxes=boxes, multimask_output=False)
            by_box = (self.sam.postprocess_masks(box_logits[0], encoding, index)[:, 0] > 0).cpu().numpy()
            point_logits, scores = self.sam.decode(encoding, [index], points=points, multimask_output=True)
            best = scores[0].argmax(dim=-1)
            by_point = self.sam.postprocess_masks(point_logits[0], encoding, index) > 0
            by_point = by_point[torch.arange(len(targets)), best].cpu().numpy()
            out.append([max(iou(by_box[k], m), iou(by_point[k], m)) for k, m in enumerate(targets)])
        return out

    def clip_scores(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[float]:
        image_vectors = self.clip.embed_images(images)
        text_vectors = self.clip.embed_texts(prompts)
        return [float(v) for v in (image_vectors * text_vectors).sum(dim=-1)]
