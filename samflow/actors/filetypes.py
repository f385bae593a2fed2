"""What a file is, from its first bytes (never from its name): magic numbers of the image and
video containers samflow reads."""

from __future__ import annotations

IMAGE_KINDS = frozenset({"jpeg", "png", "webp", "tiff", "bmp", "gif", "avif"})
VIDEO_KINDS = frozenset({"mp4", "mov", "avi", "mkv", "webm"})

_BMP_DIB_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_MOV_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def _iso_bmff_kind(head: bytes) -> str | None:
    """MP4 / MOV / AVIF share the ISO base media layout: the ``ftyp`` brand tells them apart."""
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "heif"
        if brand == b"qt  ":
            return "mov"
        return "mp4"
    if box in _MOV_ATOMS:
        return "mov"
    return None


def sniff_kind(head: bytes) -> str | None:
    """The file type from its first bytes (pass at least 32): ``"jpeg"``, ``"png"``, ``"webp"``,
    ``"tiff"``, ``"bmp"``, ``"gif"``, ``"avif"``, ``"heif"``, ``"mp4"``, ``"mov"``, ``"avi"``,
    ``"mkv"``, ``"webm"``, a few common non-media kinds (``"pdf"``, ``"zip"``, ``"gzip"``) so
    error messages can say what a file is; None when unknown. Extensions are never consulted."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    kind = _iso_bmff_kind(head)
    if kind:
        return kind
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return None
