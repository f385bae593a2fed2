"""A static HTML gallery of a run: thumbnails with their masks drawn over them in colours,
labels and scores, client-side paging, and a search-results page. One self-contained file:
thumbnails and mask overlays are embedded as data URIs (PNG/JPEG), no server needed. The page is
the jinja2 template ``templates/preview.html.j2`` (autoescaped); this module prepares what it draws.

The renderer takes prepared cards (pixels, masks, captions); reading the run is the flows' job.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
from PIL import Image

from samflow.schemas import rle

TEMPLATE = "preview.html.j2"
THUMB_SIDE = 320
PAGE_SIZE = 24
# Distinct, saturated colours (RGB) cycled over the masks of one image.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128)]


@dataclass
class Card:
    title: str
    image: np.ndarray  # HxWx3 uint8 at the original size
    masks: list[dict[str, Any]] = field(default_factory=list)  # segmentation (RLE), bbox, label, ...
    caption: str = ""


def _data_uri(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _thumb_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, THUMB_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def overlay(masks: list[dict[str, Any]], height: int, width: int, size: tuple[int, int]) -> Image.Image:
    """One RGBA image: every mask filled in its palette colour at 45% opacity."""
    rgba = np.zeros((height, width, 4), np.uint8)
    for number, mask in enumerate(masks):
        pixels = rle.decode(mask["segmentation"])
        rgba[pixels, :3] = PALETTE[number % len(PALETTE)]
        rgba[pixels, 3] = 115
    return Image.fromarray(rgba, "RGBA").resize(size, Image.Resampling.NEAREST)


def _card(card: Card, page: int) -> dict[str, Any]:
    """What the template draws for one card: a thumbnail, the mask overlay, boxes and legend."""
    height, width = card.image.shape[:2]
    size = _thumb_size(height, width)
    masks = []
    for number, mask in enumerate(card.masks):
        r, g, b = PALETTE[number % len(PALETTE)]
        label = mask.get("label") or ""
        score = mask.get("label_score") if mask.get("label_score") is not None else mask.get("predicted_iou")
        masks.append({"box": [float(v) for v in mask["bbox"]], "colour": f"rgb({r},{g},{b})",
                      "text": f"{label} {score:.2f}" if score is not None else label})
    return {
        "title": card.title, "caption": card.caption, "page": page, "size": size, "width": width, "height": height,
        "photo": _data_uri(Image.fromarray(card.image).resize(size, Image.Resampling.BILINEAR), "JPEG"),
        "overlay": _data_uri(overlay(card.masks, height, width, size), "PNG") if card.masks else "",
        "masks": masks,
    }


def _section(section: str, heading: str, link: str, cards: list[Card]) -> dict[str, Any]:
    return {"id": section, "heading": heading, "link": link, "pages": max(1, -(-len(cards) // PAGE_SIZE)),
            "cards": [_card(card, i // PAGE_SIZE) for i, card in enumerate(cards)]}


def render(title: str, gallery: list[Card], searches: dict[str, list[Card]], summary: dict[str, Any]) -> str:
    """The whole report: a gallery page and one search-results page per query."""
    sections = [_section("gallery", f"Gallery ({len(gallery)} images)", "gallery", gallery)]
    sections += [_section(f"search-{number}", f"Search: “{query}”", f"search: {query}", cards)
                 for number, (query, cards) in enumerate(searches.items())]
    environment = jinja2.Environment(loader=jinja2.PackageLoader("samflow.index", "templates"), autoescape=True)
    return environment.get_template(TEMPLATE).render(title=title, summary=summary, sections=sections,
                                                     page_size=PAGE_SIZE)
