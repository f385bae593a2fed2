"""What a synth run generates: one candidate per (trusted image, variant), with a stable key.

A candidate's key hashes everything its image depends on: the source item, its conditioning
masks, the variant, the seed, the prompt and the generation recipe (models and sampler
settings). A re-run finds every key committed and generates nothing; new or changed masks,
more variants or another recipe give new keys, and only those are generated. Thresholds of the
fidelity filter are not in the key: they decide what is kept, not what is generated.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from samflow.config import RunConfig
from samflow.schemas.tables import RLE_TYPE
from samflow.synth.prompts import build_prompt
from samflow.synth.trusted import SourceImage

CONDITION_MASK = pa.struct([("segmentation", RLE_TYPE), ("label", pa.string()), ("source", pa.string()),
                            ("source_id", pa.string())])
CANDIDATES = pa.schema([
    ("key", pa.string()), ("item_id", pa.string()), ("uri", pa.string()), ("variant", pa.int32()),
    ("seed", pa.int64()), ("prompt", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
    ("masks", pa.list_(CONDITION_MASK)),
])
_SEED_HEX = 15  # 60-bit seeds: any torch generator takes them


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recipe(cfg: RunConfig) -> dict[str, Any]:
    """The settings an image's pixels depend on, besides its own masks, prompt and seed."""
    return cfg.synth.model_dump(include={"model", "controlnet", "negative_prompt", "steps", "guidance_scale",
                                         "conditioning_scale", "short_side", "max_side"})


def seed_of(base: int, item_id: str, variant: int) -> int:
    return int(_digest(base, item_id, variant)[:_SEED_HEX], 16)


def candidates(images: list[SourceImage], cfg: RunConfig) -> pa.Table:
    """One row per (image, variant) in the CANDIDATES schema."""
    synth = cfg.synth
    settings = recipe(cfg)
    rows = []
    for image in images:
        masks = [{k: mask[k] for k in ("segmentation", "label", "source", "source_id")} for mask in image.masks]
        prompt = build_prompt([m["label"] for m in masks], synth.prompt, synth.prompt_without_labels)
        fingerprint = _digest([(m["segmentation"]["counts"], m["segmentation"]["size"], m["label"]) for m in masks])
        for variant in range(synth.variants):
            seed = seed_of(synth.seed, image.item_id, variant)
            key = _digest(image.item_id, fingerprint, variant, seed, prompt, settings)[:32]
            rows.append({"key": key, "item_id": image.item_id, "uri": image.uri, "variant": variant, "seed": seed,
                         "prompt": prompt, "height": image.height, "width": image.width, "masks": masks})
    return pa.Table.from_pylist(rows, schema=CANDIDATES)
