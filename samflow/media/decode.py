"""Decode stage: an input's bytes -> one row per image or sampled video frame, or an error row
that names the stage and the reason. Nothing a file contains can fail a batch: each row's
failure becomes an error row. Still images decode in samflow/media/image.py, videos in
samflow/media/video.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

import numpy as np

from samflow.media.filetypes import VIDEO_KINDS, sniff_kind
from samflow.media.image import HEAD_BYTES, DecodeError, decode_image
from samflow.media.video import VideoError, VideoPolicy, sample_frames, video_support
from samflow.schemas.ids import item_id, item_key

# Files above this size are peeked at (a ranged read of the first bytes) before being fetched
# whole, so a large video is refused without downloading it.
_PEEK_ABOVE_BYTES = 8 * 1024 * 1024


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
            head = self._read(uri, lambda: self.source.read_head(uri, HEAD_BYTES))
        else:
            data = self._read(uri, lambda: self.source.read(uri))
            head = data[:HEAD_BYTES]
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
        kind = sniff_kind(data[:HEAD_BYTES])
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
        except Exception as exc:
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
