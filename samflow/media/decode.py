"""Decode stage: bytes -> RGB pixels, or an error row that names the stage and the reason.

Still images go through Pillow, restricted to the formats samflow supports (the file type comes
from the bytes, never the extension), EXIF orientation applied, every pixel mode normalised to
8-bit RGB. Nothing a file contains can fail a batch: each row's failure becomes an error row.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

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
from samflow.media.video import VideoError, VideoPolicy, sample_frames, video_support
from samflow.schemas.ids import item_id, item_key

# Files above this size are peeked at (a ranged read of the first bytes) before being fetched
# whole, so a large video is refused without downloading it.
_PEEK_ABOVE_BYTES = 8 * 1024 * 1024
_HEAD_BYTES = 64

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
    head = bytes(data[:_HEAD_BYTES])
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
        except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a typed error
            raise _classify(kind, exc, data, phase) from exc


class ByteSource(Protocol):
    """Where the bytes come from (``samflow.store.storage.StorageSource`` in a run)."""

    def read(self, uri: str) -> bytes: ...
    def read_head(self, uri: str, n: int) -> bytes: ...
    def open(self, uri: str) -> IO[bytes]: ...


class InputLimits(Protocol):
    """The ``input`` config section, as far as decoding goes."""

    max_pixels: int
    max_bytes: int
    video: VideoPolicy


# Rows per output chunk when the video policy does not say (images are small next to a chunk).
_DEFAULT_CHUNK_ROWS = 16


class DecodeStage:
    """Ray Data ``map_batches`` callable (``batch_format="numpy"``): ``uri``, ``size`` in; out,
    one row per image, one per sampled video frame (``input.video``), or an error row. Holds no
    model, so it can run as tasks or as an actor pool.

    :meth:`stream` is the form the pipeline runs: it yields the rows in chunks of at most
    ``input.video.chunk_frames`` rows as the frames leave the decoder, so a long video never
    sits whole in one block or in memory. Calling the stage returns all rows at once (tests).

    A video whose stream breaks after some frames keeps those frames and adds one error row
    saying where it broke, so the damage is never silent. With ``defer_videos`` (the track
    stage is on) a video becomes one ``video_pending`` row with no pixels (or, for a video that
    came inline, its encoded bytes): the track stage decodes it, in order, as it tracks.
    """

    def __init__(
        self, source: ByteSource, input_cfg: InputLimits, stage_name: str = "decode",
        defer_videos: bool = False,
    ):
        self.source = source
        self.input_cfg = input_cfg
        self.stage_name = stage_name
        self.defer_videos = defer_videos
        self.chunk_rows = max(1, int(getattr(input_cfg.video, "chunk_frames", _DEFAULT_CHUNK_ROWS)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _columns([row for item in _listed(batch) for row in self._item_rows(*item)])

    def stream(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The rows of ``batch``'s files in bounded chunks (always at least one, maybe empty)."""
        pending: list[dict[str, Any]] = []
        emitted = False
        for item in _listed(batch):
            for row in self._item_rows(*item):
                pending.append(row)
                if len(pending) >= self.chunk_rows:
                    yield _columns(pending)
                    pending, emitted = [], True
        if pending or not emitted:
            yield _columns(pending)

    def _item_rows(
        self, uri: str, size: int, data: bytes | None, failure: tuple[str, str], meta_json: str,
        source_id: str,
    ) -> Iterator[dict[str, Any]]:
        """The file's rows, each carrying the input's sidecar JSON text (a tar member's) and its
        manifest id, which then keys its ``item_id`` instead of the URI."""
        for row in self._rows(uri, size, data, failure):
            row["meta_json"] = meta_json
            row["source_id"] = source_id
            if source_id:
                row["item_id"] = item_id(item_key(uri, source_id), row["frame_index"])
            yield row

    def _rows(
        self, uri: str, size: int, data: bytes | None = None, failure: tuple[str, str] = ("", "")
    ) -> Iterator[dict[str, Any]]:
        """The file's rows; whatever fails becomes one error row after the rows it had."""
        if failure[0]:  # found broken before decode (a bad tar member, an unreadable Parquet row)
            yield _error_row(uri, "read", failure[0], failure[1])
            return
        try:
            if data is not None:
                yield from self._decode_inline(uri, bytes(data))
            else:
                yield from self._decode(uri, size)
        except (DecodeError, VideoError) as err:
            yield _error_row(uri, self.stage_name, err.error_type, err.message)
        except Exception as exc:  # noqa: BLE001 - a bad row must never fail the batch
            message = f"unexpected {type(exc).__name__} while decoding: {exc}"
            yield _error_row(uri, self.stage_name, "internal_error", message)

    def _decode(self, uri: str, size: int) -> Iterator[dict[str, Any]]:
        max_bytes = self.input_cfg.max_bytes
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        data = None
        if size > _PEEK_ABOVE_BYTES:  # a large file may be a video: sniff before fetching it all
            head = self._read(uri, lambda: self.source.read_head(uri, _HEAD_BYTES))
        else:
            data = self._read(uri, lambda: self.source.read(uri))
            head = data[:_HEAD_BYTES]
        kind = sniff_kind(head)
        if kind in VIDEO_KINDS:
            yield from self._video_rows(uri, kind, data, inline=False)
            return
        if data is None:
            data = self._read(uri, lambda: self.source.read(uri))
        if len(data) > max_bytes:  # the file grew since it was listed
            raise _too_large(len(data), max_bytes)
        yield _image_row(uri, decode_image(data, self.input_cfg.max_pixels))

    def _decode_inline(self, uri: str, data: bytes) -> Iterator[dict[str, Any]]:
        if len(data) > self.input_cfg.max_bytes:
            raise _too_large(len(data), self.input_cfg.max_bytes)
        kind = sniff_kind(data[:_HEAD_BYTES])
        if kind in VIDEO_KINDS:
            yield from self._video_rows(uri, kind, data, inline=True)
            return
        yield _image_row(uri, decode_image(data, self.input_cfg.max_pixels))

    def _video_rows(self, uri: str, kind: str, data: bytes | None, inline: bool) -> Iterator[dict[str, Any]]:
        """``inline``: the bytes came with the row (no URI storage can reopen)."""
        reason = video_support()
        if reason:
            raise DecodeError("unsupported_video", f"{kind.upper()} video: {reason}")
        if self.defer_videos:
            yield _pending_video_row(uri, data if inline else None)
            return
        with self._open(uri, data) as source:
            for frame in sample_frames(source, self.input_cfg.video, self.input_cfg.max_pixels):
                yield _image_row(uri, frame.rgb, frame.index, frame.timestamp_s)

    def video_frames(self, uri: str, data: bytes | None = None) -> Iterator[Any]:
        """The sampled frames of a video (``video.Frame``), from ``data`` when the video came
        inline (a tar member, Parquet bytes), else opened from storage; for the track stage, which
        decodes the videos this stage deferred. Raises DecodeError / VideoError."""
        with self._open(uri, data) as source:
            yield from sample_frames(source, self.input_cfg.video, self.input_cfg.max_pixels)

    def _open(self, uri: str, data: bytes | None) -> IO[bytes]:
        if data is not None:
            return io.BytesIO(data)
        try:  # stream the file: FFmpeg reads only the parts it needs
            return self.source.open(uri)
        except FileNotFoundError:
            raise DecodeError("not_found", "file not found (deleted after it was listed?)") from None

    @staticmethod
    def _read(uri: str, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except FileNotFoundError:
            raise DecodeError("not_found", "file not found (deleted after it was listed?)") from None
        except PermissionError as exc:
            raise DecodeError("read_failed", f"permission denied: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - network, auth, throttling...
            raise DecodeError("read_failed", f"could not read: {type(exc).__name__}: {exc}") from exc


def _too_large(size: int, max_bytes: int) -> DecodeError:
    message = f"file is {size:,} bytes, above the limit of {max_bytes:,} (input.max_bytes)"
    return DecodeError("too_large", message)


def _image_row(
    uri: str, pixels: np.ndarray, frame_index: int = 0, timestamp_s: float = float("nan")
) -> dict[str, Any]:
    height, width = pixels.shape[:2]
    return {
        "uri": uri,
        "item_id": item_id(uri, frame_index),
        "frame_index": frame_index,
        "timestamp_s": timestamp_s,
        "width": width,
        "height": height,
        "pixels": pixels.tobytes(),
        "error_stage": "",
        "error_type": "",
        "error_message": "",
        "video_pending": False,
    }


def _pending_video_row(uri: str, data: bytes | None) -> dict[str, Any]:
    """A whole video, not decoded yet (the track stage decodes it), not an error. Its ``pixels``
    hold the encoded file when it came inline: a tar member or a Parquet cell has no URI that
    storage could open again."""
    return dict(_error_row(uri, "", "", ""), pixels=data or b"", video_pending=True)


def _error_row(uri: str, stage: str, error_type: str, message: str) -> dict[str, Any]:
    return {
        "uri": uri,
        "item_id": item_id(uri, 0),
        "frame_index": 0,
        "timestamp_s": float("nan"),
        "width": 0,
        "height": 0,
        "pixels": b"",
        "error_stage": stage,
        "error_type": error_type,
        "error_message": message,
        "video_pending": False,
    }


_STR_COLUMNS = ("uri", "item_id", "error_stage", "error_type", "error_message", "meta_json", "source_id")


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows -> the stage's output columns with fixed dtypes. Text and bytes are object arrays
    (variable length; numpy's fixed "S" dtype would drop trailing zero bytes of pixels); an
    empty batch gets typed empty arrays so Arrow sees string/binary rather than null."""
    out: dict[str, np.ndarray] = {}
    for name in _STR_COLUMNS:
        out[name] = np.array([r[name] for r in rows], dtype=object if rows else str)
    out["frame_index"] = np.array([r["frame_index"] for r in rows], dtype=np.int32)
    out["timestamp_s"] = np.array([r["timestamp_s"] for r in rows], dtype=np.float64)
    out["width"] = np.array([r["width"] for r in rows], dtype=np.int32)
    out["height"] = np.array([r["height"] for r in rows], dtype=np.int32)
    out["video_pending"] = np.array([r["video_pending"] for r in rows], dtype=bool)
    pixels = np.empty(len(rows), dtype=object if rows else "S1")
    pixels[:] = [r["pixels"] for r in rows]
    out["pixels"] = pixels
    return {name: out[name] for name in _ORDER}


_ORDER = (
    "uri", "item_id", "frame_index", "timestamp_s", "width", "height",
    "pixels", "error_stage", "error_type", "error_message", "video_pending", "meta_json", "source_id",
)


def _listed(batch: dict[str, np.ndarray]) -> Iterator[tuple[str, int, bytes | None, tuple[str, str], str, str]]:
    """(uri, size, inline bytes, preset failure, sidecar JSON text, manifest id) of each input
    row. Tar and Parquet inputs carry their bytes in ``data``; an input found broken before decode
    carries ``error_type`` / ``error_message``; a tar member with a JSON sidecar carries
    ``meta_json``; a manifest entry with an ``id`` carries ``source_id``. Plain files have none
    of these columns."""
    n = len(batch["uri"])
    inline = batch.get("data", [None] * n)
    failed = batch.get("error_type", [""] * n)
    messages = batch.get("error_message", [""] * n)
    sidecars = batch.get("meta_json", [""] * n)
    source_ids = batch.get("source_id", [""] * n)
    for row, (uri, size) in enumerate(zip(batch["uri"], batch["size"], strict=True)):
        failure = (str(failed[row] or ""), str(messages[row] or ""))
        yield str(uri), int(size or 0), inline[row], failure, str(sidecars[row] or ""), str(source_ids[row] or "")
