"""Still images: bytes -> HxWx3 uint8 RGB, or a DecodeError that names the reason.

Pillow, restricted to the formats samflow supports (the file type comes from the bytes, never the
extension), EXIF orientation applied, every pixel mode normalised to 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from samflow.media.filetypes import IMAGE_KINDS, VIDEO_KINDS, sniff_kind

HEAD_BYTES = 64  # enough of a file to sniff its type

# Pillow classes opened directly by sniffed kind: only these decoders ever see user bytes (no
# EPS/Ghostscript and friends), and a broken header raises its real reason instead of Pillow's
# generic "cannot identify image file".
_OPENERS: dict[str, Callable[[io.BytesIO], Image.Image]] = {
    "jpeg": JpegImagePlugin.jpeg_factory,
    "png": PngImagePlugin.PngImageFile,
    "gif": GifImagePlugin.GifImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
}
try:  # AVIF ships in Pillow's wheels from 11.3; keep working on a build without it
    from PIL import AvifImagePlugin

    _OPENERS["avif"] = AvifImagePlugin.AvifImageFile
except ImportError:  # pragma: no cover - depends on the Pillow build
    pass

_EXIF_ORIENTATION = 0x0112

_NON_IMAGE_NAMES = {"pdf": "a PDF document", "zip": "a ZIP archive", "gzip": "a gzip archive"}

_TRUNCATION_HINTS = (
    "truncated",
    "requires a buffer",
    "buffer is not large enough",
    "not enough data",
    "premature end",
    "end of file",
    "eof",
)
_UNSUPPORTED_HINTS = ("not supported", "unsupported", "not available", "unknown compression")


class DecodeError(Exception):
    """A file that yields no pixels; ``error_type`` is short snake_case, ``message`` says why."""

    def __init__(self, error_type: str, message: str):
        super().__init__(error_type, message)  # both in args, so it pickles across Ray workers
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


def _describe_unknown(head: bytes) -> str:
    sample = head[:16]
    printable = all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64])
    if printable and head:
        text = head[:24].decode("ascii", "replace").split("\n")[0]
        return f"not an image: unrecognised file signature, content looks like text ({text!r}...)"
    return f"not an image: unrecognised file signature (first bytes: {sample.hex(' ')})"


def _check_kind(kind: str | None, head: bytes) -> str:
    """The kind if it is a decodable still image; otherwise the DecodeError that says what it is."""
    if kind in _OPENERS:
        return kind
    if kind in VIDEO_KINDS:
        message = f"{kind.upper()} video: a still-image decoder cannot read it (videos go to DecodeStage)"
        raise DecodeError("unsupported_video", message)
    if kind in IMAGE_KINDS or kind == "heif":
        raise DecodeError("unsupported_image", f"{kind.upper()} images are not supported by this build")
    if kind in _NON_IMAGE_NAMES:
        raise DecodeError("not_an_image", f"not an image: the file is {_NON_IMAGE_NAMES[kind]}")
    raise DecodeError("not_an_image", _describe_unknown(head))


# Leading bytes of each decodable format, to recognise a file cut inside its own signature.
_SIGNATURES = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "gif": (b"GIF87a", b"GIF89a"),
    "tiff": (b"II*\x00", b"MM\x00*"),
}


def _cut_signature(data: bytes) -> str | None:
    """The format whose signature this too-short file is a strict prefix of, if any."""
    for kind, signatures in _SIGNATURES.items():
        if any(len(data) < len(sig) and sig.startswith(data) for sig in signatures):
            return kind
    return None


def _ends_early(kind: str, data: bytes) -> bool:
    """Whether the container says more bytes should follow: a truncated file, not a corrupt one.
    Only consulted after a decoder failed, to name the failure."""
    if kind == "png":
        return b"IEND" not in data[-32:]
    if kind == "gif":
        return not data.rstrip(b"\x00").endswith(b"\x3b")
    if kind == "webp":
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    if kind == "bmp":
        return int.from_bytes(data[2:6], "little") > len(data)
    if kind == "jpeg":
        return b"\xff\xd9" not in data[-4096:]
    if kind == "tiff":
        return _tiff_ifd_ends_early(data)
    return False


def _tiff_ifd_ends_early(data: bytes) -> bool:
    """Whether the first TIFF directory (its entry count and entries) lies past the end."""
    order = "little" if data[:2] == b"II" else "big"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 8-byte offsets, 20-byte entries
        offset, count_size, entry_size = int.from_bytes(data[8:16], order), 8, 20
    else:
        offset, count_size, entry_size = int.from_bytes(data[4:8], order), 2, 12
    if offset + count_size > len(data):
        return True
    count = int.from_bytes(data[offset : offset + count_size], order)
    return offset + count_size + count * entry_size > len(data)


def _classify(kind: str, exc: BaseException, data: bytes, phase: str) -> DecodeError:
    """Turn whatever a decoder raised into a DecodeError with a reason a person can act on."""
    if isinstance(exc, DecodeError):
        return exc
    fmt = kind.upper()
    text = str(exc) or type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError):
        return DecodeError("too_many_pixels", f"{fmt} decompression-bomb guard: {text}")
    if isinstance(exc, MemoryError):
        return DecodeError("out_of_memory", f"{fmt}: ran out of memory while decoding")
    lowered = text.lower()
    if isinstance(exc, EOFError) or any(h in lowered for h in _TRUNCATION_HINTS):
        return DecodeError("truncated", f"truncated {fmt}: {text}")
    if _ends_early(kind, data):
        return DecodeError("truncated", f"truncated {fmt}: the file ends before the image does ({text})")
    if any(h in lowered for h in _UNSUPPORTED_HINTS):
        return DecodeError("unsupported_image", f"unsupported {fmt}: {text}")
    if kind == "tiff":
        unsupported = _unsupported_tiff_compression(data)
        if unsupported is not None:
            message = f"unsupported TIFF: compression scheme {unsupported} is not supported"
            return DecodeError("unsupported_image", message)
    if text == "not identified by this driver":  # Pillow's words for "header fails validation"
        text = f"the header is not valid {fmt}"
    return DecodeError("corrupt", f"corrupt {fmt}: bad {phase}: {text} ({type(exc).__name__})")


def _unsupported_tiff_compression(data: bytes) -> int | None:
    """The first directory's Compression tag value when Pillow has no codec for it (Pillow only
    reports the bare number)."""
    from PIL.TiffImagePlugin import COMPRESSION_INFO

    try:
        order = "little" if data[:2] == b"II" else "big"
        offset = int.from_bytes(data[4:8], order)
        count = int.from_bytes(data[offset : offset + 2], order)
        for n in range(count):
            entry = data[offset + 2 + 12 * n : offset + 14 + 12 * n]
            if int.from_bytes(entry[:2], order) == 259:  # Compression, a SHORT
                value = int.from_bytes(entry[8:10], order)
                return None if value in COMPRESSION_INFO else value
    except (IndexError, ValueError):
        return None
    return None


def _check_size(kind: str, im: Image.Image, max_pixels: int) -> None:
    """Refuse from the header alone, before any pixel buffer is allocated."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt", f"corrupt {kind.upper()}: header declares a {width}x{height} image")
    if width * height > max_pixels:
        raise DecodeError(
            "too_many_pixels",
            f"{kind.upper()} declares {width}x{height} = {width * height:,} pixels, above the "
            f"limit of {max_pixels:,} (input.max_pixels)",
        )


def _apply_orientation(im: Image.Image) -> Image.Image:
    # A broken EXIF block is metadata damage, not pixel damage: keep the pixels unrotated rather
    # than lose a decodable image.
    try:
        if im.getexif().get(_EXIF_ORIENTATION, 1) in (0, 1):
            return im  # upright: skip exif_transpose, which copies the whole image
        return ImageOps.exif_transpose(im) or im
    except Exception:  # noqa: BLE001 - any EXIF parser failure means "orientation unknown"
        return im


def _scale_to_uint8(values: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map a high-bit-depth channel to 0..255: by its container's full scale when known, else
    by the value range actually present."""
    values = values.astype(np.float64, copy=False)
    if full_scale is None:
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        if lo >= 0 and hi <= 1.0:
            full_scale = 1.0
        elif lo >= 0 and hi <= 255:
            full_scale = 255.0
        elif lo >= 0 and hi <= 65535:
            full_scale = 65535.0
        else:
            values = values - lo
            full_scale = max(hi - lo, 1e-12)
    scaled = np.nan_to_num(values / full_scale * 255.0, nan=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    # Pixels under full transparency hold arbitrary colours; composite so they mean "background".
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8 RGB, C-contiguous."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        full_scale = 65535.0 if mode.startswith("I;16") else None
        gray = _scale_to_uint8(np.asarray(im), full_scale)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in im.info or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        im = _composite_on_white(im.convert("RGBA"))
    elif mode != "RGB":
        im = im.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled by Pillow), YCbCr, ...
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode a still image's bytes to HxWx3 uint8 RGB (first frame of animations/multi-page).

    Raises DecodeError for empty, unknown, unsupported, truncated, corrupt or oversized input.
    """
    if not data:
        raise DecodeError("empty_file", "empty file (0 bytes)")
    cut = _cut_signature(data)
    if cut:
        message = f"truncated {cut.upper()}: the file is only {len(data)} bytes, cut inside its signature"
        raise DecodeError("truncated", message)
    head = bytes(data[:HEAD_BYTES])
    kind = _check_kind(sniff_kind(head), head)
    with warnings.catch_warnings():
        # samflow enforces its own max_pixels below; Pillow's warning would only add noise and
        # its hard limit (2x its MAX_IMAGE_PIXELS) is caught and reported as too_many_pixels.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. "malformed MPO": decoded as JPEG
        phase = "header"
        try:
            im = _OPENERS[kind](io.BytesIO(data))
            _check_size(kind, im, max_pixels)
            phase = "pixel data"
            im.load()
            return _to_rgb_array(_apply_orientation(im))
        except Exception as exc:
            raise _classify(kind, exc, data, phase) from exc
