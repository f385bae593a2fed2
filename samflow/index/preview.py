"""A static HTML gallery of a run: thumbnails with their masks drawn over them in colours,
labels and scores, client-side paging, and a search-results page. One self-contained file:
thumbnails and mask overlays are embedded as data URIs (PNG/JPEG), no server needed.

The renderer takes prepared cards (pixels, masks, captions); reading the run is the flows' job.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from samflow.schemas import rle

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


def _card_html(card: Card, page: int, section: str) -> str:
    height, width = card.image.shape[:2]
    size = _thumb_size(height, width)
    photo = _data_uri(Image.fromarray(card.image).resize(size, Image.Resampling.BILINEAR), "JPEG")
    boxes, legend = [], []
    for number, mask in enumerate(card.masks):
        r, g, b = PALETTE[number % len(PALETTE)]
        x, y, w, h = mask["bbox"]
        label = mask.get("label") or ""
        score = mask.get("label_score") if mask.get("label_score") is not None else mask.get("predicted_iou")
        text = html.escape(f"{label} {score:.2f}" if score is not None else label)
        boxes.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" stroke="rgb({r},{g},{b})"/>'
                     f'<text x="{x + 2}" y="{y + 12}" fill="rgb({r},{g},{b})">{text}</text>')
        legend.append(f'<li><span class="swatch" style="background:rgb({r},{g},{b})"></span>{text or "mask"}</li>')
    layer = ""
    if card.masks:
        layer = (f'<img class="overlay" alt="masks" src="{_data_uri(overlay(card.masks, height, width, size), "PNG")}">'
                 f'<svg class="boxes" viewBox="0 0 {width} {height}" preserveAspectRatio="none">{"".join(boxes)}</svg>')
    return (
        f'<figure class="card" data-section="{section}" data-page="{page}">'
        f'<div class="frame" style="width:{size[0]}px;height:{size[1]}px">'
        f'<img class="photo" alt="{html.escape(card.title)}" src="{photo}">{layer}</div>'
        f'<figcaption><b>{html.escape(card.title)}</b> {html.escape(card.caption)}'
        f'<ul class="legend">{"".join(legend)}</ul></figcaption></figure>'
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem;background:#f4f4f4;color:#222}
nav button{margin:0 .2rem;padding:.3rem .7rem}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{margin:0;background:#fff;padding:6px;border-radius:6px;box-shadow:0 1px 3px #0003;max-width:330px}
.frame{position:relative}
.frame img,.frame svg{position:absolute;left:0;top:0;width:100%;height:100%}
.boxes rect{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}
.boxes text{font-size:11px;paint-order:stroke;stroke:#000;stroke-width:2px}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.legend{list-style:none;padding:0;margin:2px 0;display:flex;flex-wrap:wrap;gap:6px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:3px;border-radius:2px}
.hidden{display:none}
"""

SCRIPT = """
const pageSize = %d;
function show(section, page) {
  document.querySelectorAll('section').forEach(s => s.classList.toggle('hidden', s.id !== section));
  document.querySelectorAll('#' + section + ' .card').forEach(
    c => c.classList.toggle('hidden', Number(c.dataset.page) !== page));
  const pages = Number(document.getElementById(section).dataset.pages);
  document.getElementById(section + '-at').textContent = 'page ' + (page + 1) + ' of ' + pages;
  window.current = {section, page, pages};
}
function step(delta) {
  const c = window.current, next = Math.min(Math.max(c.page + delta, 0), c.pages - 1);
  show(c.section, next);
}
function countLoaded() {
  const done = sel => [...document.querySelectorAll(sel)].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.photosLoaded = done('img.photo');
  document.body.dataset.overlaysLoaded = done('img.overlay');
}
window.addEventListener('load', () => { show('gallery', 0); countLoaded(); });
"""


def _section(section: str, title: str, cards: list[str], extra: str = "") -> str:
    pages = max(1, -(-len(cards) // PAGE_SIZE))
    return (f'<section id="{section}" data-pages="{pages}"><h2>{html.escape(title)}</h2>{extra}'
            f'<nav><button onclick="step(-1)">&larr; previous</button><span id="{section}-at"></span>'
            f'<button onclick="step(1)">next &rarr;</button></nav>'
            f'<div class="grid">{"".join(cards)}</div></section>')


def render(title: str, gallery: list[Card], searches: dict[str, list[Card]], summary: dict[str, Any]) -> str:
    """The whole report: a gallery page and one search-results page per query."""
    gallery_cards = [_card_html(card, i // PAGE_SIZE, "gallery") for i, card in enumerate(gallery)]
    parts = [_section("gallery", f"Gallery ({len(gallery)} images)", gallery_cards)]
    links = ['<a href="#" onclick="show(\'gallery\',0);return false">gallery</a>']
    for number, (query, cards) in enumerate(searches.items()):
        section = f"search-{number}"
        html_cards = [_card_html(card, i // PAGE_SIZE, section) for i, card in enumerate(cards)]
        parts.append(_section(section, f"Search: “{query}”", html_cards))
        links.append(f'<a href="#" onclick="show(\'{section}\',0);return false">search: {html.escape(query)}</a>')
    facts = html.escape(json.dumps(summary))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>'
            f'<p class="summary">{facts}</p><p class="links">{" | ".join(links)}</p>'
            f'{"".join(parts)}<script>{SCRIPT % PAGE_SIZE}</script></body></html>')
