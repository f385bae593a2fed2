"""What a file is, from its first bytes (never from its name): magic numbers of the image and
video containers samflow reads."""

from __future__ import annotations

IMAGE_KINDS = frozenset({"jpeg", "png", "webp", "tiff", "bmp", "gif", "avif"})
VIDEO_KINDS = frozenset({"mp4", "mov", "avi", "mkv", "webm", "mpegts", "mpeg", "flv", "ogg", "asf", "y4m"})
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")

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
    video = _other_video_kind(head)
    if video:
        return video
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    return None


def _other_video_kind(head: bytes) -> str | None:
    """Video containers beyond MP4/MOV/Matroska/AVI that FFmpeg reads: MPEG transport and
    program streams, FLV, Ogg (may hold only audio: decode then says so), ASF/WMV, Y4M."""
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    if head[:1] == b"\x47" and len(head) < 189 and head[:4] in (b"\x47\x40\x00\x10", b"\x47\x40\x11\x10"):
        return "mpegts"  # a PAT/SDT packet header, when fewer bytes than a packet were sniffed
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(_ASF_GUID):
        return "asf"
    if head.startswith(b"YUV4MPEG2"):
        return "y4m"
    return None
