"""A corpus of inputs that must not decode, and of unusual images that must.

``write_bad_inputs(dir)`` -> {file name: expected error_type}; ``write_odd_good_images(dir)`` ->
file names. ``odd_good_images()`` also gives, for each good file, the RGB array a correct
decoder must return (built from the source pixels, not by decoding) and the tolerance the
file's codec allows. Every file is made here, in code, so the corpus needs no download.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from samflow.media.video import video_support

FAKE_VIDEO_ERROR = "unsupported_video" if video_support() else "corrupt"

# --- building blocks ---------------------------------------------------------------------------

HEIGHT, WIDTH = 48, 64  # not square, so a wrong rotation changes the shape
QUADRANT_COLOURS = np.array(
    [[[220, 30, 30], [30, 200, 40]], [[40, 60, 230], [240, 220, 50]]], dtype=np.uint8
)


def quadrants(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Four flat colours, one per quadrant: survives JPEG, and any flip or turn changes it."""
    rows = (np.arange(height) >= height // 2).astype(int)
    cols = (np.arange(width) >= width // 2).astype(int)
    return QUADRANT_COLOURS[rows[:, None], cols[None, :]]


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares any size (8-bit RGB), followed by the given pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(idat or b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def bmp_with_header(width: int, height: int) -> bytes:
    """A BMP whose header declares a huge 24-bit image but holds only a few bytes of pixels."""
    pixels = b"\x00" * 64
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def _flip_bytes(data: bytes, start: int, count: int) -> bytes:
    damaged = bytearray(data)
    for i in range(start, min(start + count, len(damaged))):
        damaged[i] ^= 0xA5
    return bytes(damaged)


def _damage_huffman_table(jpeg: bytes) -> bytes:
    """Overwrite the first Huffman table's code counts: the header parses, the scan cannot."""
    table = jpeg.index(b"\xff\xc4")
    return jpeg[: table + 5] + b"\xff" * 16 + jpeg[table + 21 :]


def _idat_offset(png: bytes) -> int:
    return png.index(b"IDAT") + 4


def _noise_rgb(seed: int, height: int = HEIGHT, width: int = WIDTH) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _mp4_header() -> bytes:
    ftyp = struct.pack(">I", 24) + b"ftyp" + b"isom" + struct.pack(">I", 512) + b"isommp42"
    mdat = struct.pack(">I", 16) + b"mdat" + b"\x00" * 8
    return ftyp + mdat


def _mkv_header() -> bytes:
    return b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x88matroska" + b"\x00" * 32


def _tiff_unknown_compression() -> bytes:
    """A valid little TIFF whose Compression tag names a codec nobody implements."""
    tiff = bytearray(encode(_noise_rgb(7, 8, 8), "TIFF"))
    order = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for n in range(count):
        entry = ifd + 2 + 12 * n
        tag, typ = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag == 259:  # Compression
            tiff[entry + 8 : entry + 10] = struct.pack(order + "H", 60123)
            return bytes(tiff)
    raise AssertionError("Pillow wrote a TIFF without a Compression tag")


# --- the bad corpus ----------------------------------------------------------------------------


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, expected error_type)}; extensions deliberately lie in places."""
    jpeg = encode(_noise_rgb(1), "JPEG", quality=90)
    png = encode(_noise_rgb(2), "PNG")
    gif = encode(_noise_rgb(3).convert("P"), "GIF")
    webp = encode(_noise_rgb(4), "WEBP", quality=80)
    tiff = encode(_noise_rgb(5), "TIFF")
    random_bytes = np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return {
        "empty.jpg": (b"", "empty_file"),
        "empty_no_extension": (b"", "empty_file"),
        "truncated_half.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated_header.jpg": (jpeg[:12], "truncated"),
        "truncated.png": (png[: len(png) * 2 // 3], "truncated"),
        "truncated_signature.png": (png[:5], "truncated"),
        "truncated.gif": (gif[: len(gif) // 2], "truncated"),
        "truncated.webp": (webp[: len(webp) // 2], "truncated"),
        "truncated.tif": (tiff[: len(tiff) // 2], "truncated"),
        "corrupt_pixels.png": (_flip_bytes(png, _idat_offset(png) + 40, 64), "corrupt"),
        "corrupt_header.jpg": (jpeg[:20] + b"\x12\x34" * 50 + b"\xff\xd9", "corrupt"),
        "corrupt_huffman_table.jpg": (_damage_huffman_table(jpeg), "corrupt"),
        "corrupt_zero_size.png": (png_with_header(0, 10), "corrupt"),
        "bomb_100k_x_100k.png": (png_with_header(100_000, 100_000), "too_many_pixels"),
        "bomb_50k_x_50k.bmp": (bmp_with_header(50_000, 50_000), "too_many_pixels"),
        "text_named.jpg": (b"this is a text file, not a picture\n" * 4, "not_an_image"),
        "page.html.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "not_an_image"),
        "random_bytes.jpg": (random_bytes, "not_an_image"),
        "document.pdf.jpg": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "not_an_image"),
        "archive.zip.png": (b"PK\x03\x04" + b"\x14\x00" * 20, "not_an_image"),
        # Headers without streams: refused as videos, or as broken ones where PyAV can decode.
        "clip.mp4": (_mp4_header(), FAKE_VIDEO_ERROR),
        "clip.mkv": (_mkv_header(), FAKE_VIDEO_ERROR),
        "unknown_codec.tif": (_tiff_unknown_compression(), "unsupported_image"),
    }


def write_bad_inputs(directory: Path) -> dict[str, str]:
    """Write the bad corpus into ``directory``; returns {file name: expected error_type}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, error_type) in bad_inputs().items():
        (directory / name).write_bytes(data)
        expected[name] = error_type
    return expected


# --- unusual images that must decode -----------------------------------------------------------


def _cmyk_jpeg() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    return encode(Image.fromarray(source).convert("CMYK"), "JPEG", quality=95), source, 4.0


def _png16_gray() -> tuple[bytes, np.ndarray, float]:
    ramp = np.linspace(0, 65535, WIDTH).round().astype(np.uint16)
    values = np.tile(ramp, (HEIGHT, 1))
    data = encode(Image.fromarray(values), "PNG")
    gray = np.round(values / 257.0).astype(np.uint8)
    return data, np.repeat(gray[:, :, None], 3, axis=2), 1.0


def _palette_png_transparent() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    image = Image.fromarray(source).quantize(colors=4, method=Image.Quantize.MEDIANCUT)
    index = np.asarray(image)
    transparent = int(index[0, 0])  # the top-left quadrant's colour becomes transparent
    expected = source.copy()
    expected[index == transparent] = 255
    return encode(image, "PNG", transparency=transparent), expected, 0.0


def _la_png() -> tuple[bytes, np.ndarray, float]:
    gray = np.tile(np.linspace(0, 255, WIDTH).round().astype(np.uint8), (HEIGHT, 1))
    alpha = np.full_like(gray, 255)
    alpha[: HEIGHT // 2] = 0  # top half fully transparent -> white
    image = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    expected = np.where(alpha > 0, gray, 255).astype(np.uint8)
    return encode(image, "PNG"), np.repeat(expected[:, :, None], 3, axis=2), 0.0


def _rgba_png() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    alpha = np.tile(np.linspace(0, 255, WIDTH).round().astype(np.uint8), (HEIGHT, 1))
    image = Image.fromarray(np.dstack([source, alpha]), "RGBA")
    a = alpha[:, :, None] / 255.0
    expected = np.round(source * a + 255 * (1 - a)).astype(np.uint8)
    return encode(image, "PNG"), expected, 1.0


def _png16_rgb() -> tuple[bytes, np.ndarray, float]:
    """16 bits per channel RGB, written by hand (Pillow cannot write it)."""
    source = quadrants()
    # Low bytes carry real precision; a decoder may round or keep the high byte (within 1).
    wide = np.minimum(source.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in wide)
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 16, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    return data, np.round(wide / 257.0).astype(np.uint8), 1.0


def _float_tiff() -> tuple[bytes, np.ndarray, float]:
    gray = quadrants()[:, :, 0]
    data = encode(Image.fromarray(gray.astype(np.float32) / 255.0), "TIFF")
    return data, np.repeat(gray[:, :, None], 3, axis=2), 0.0


def _multipage_tiff() -> tuple[bytes, np.ndarray, float]:
    first = quadrants()
    pages = [Image.fromarray(first), Image.fromarray(first[::-1].copy())]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]), first, 0.0


def _progressive_jpeg() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    return encode(Image.fromarray(source), "JPEG", quality=95, progressive=True), source, 4.0


def _gray_jpeg() -> tuple[bytes, np.ndarray, float]:
    gray = quadrants()[:, :, 1]
    return encode(Image.fromarray(gray), "JPEG", quality=95), np.repeat(gray[:, :, None], 3, axis=2), 2.0


def _exif_rotated_jpeg() -> tuple[bytes, np.ndarray, float]:
    """Stored turned 90 degrees; EXIF orientation 6 says 'turn clockwise to display'."""
    upright = quadrants()
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes()), upright, 6.0


def _animated_gif() -> tuple[bytes, np.ndarray, float]:
    first = quadrants()
    frames = [Image.fromarray(first)] + [Image.fromarray(np.roll(first, s, axis=1)) for s in (16, 32)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return data, first, 0.0


def _webp() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    return encode(Image.fromarray(source), "WEBP", lossless=True), source, 0.0


def _tiff_lzw() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    return encode(Image.fromarray(source), "TIFF", compression="tiff_lzw"), source, 0.0


def _bmp() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    return encode(Image.fromarray(source), "BMP"), source, 0.0


def _bilevel_png() -> tuple[bytes, np.ndarray, float]:
    bits = (quadrants()[:, :, 0] > 128)
    data = encode(Image.fromarray(bits), "PNG")
    expected = np.where(bits, 255, 0).astype(np.uint8)
    return data, np.repeat(expected[:, :, None], 3, axis=2), 0.0


def _png_named_jpg() -> tuple[bytes, np.ndarray, float]:
    source = quadrants()
    return encode(Image.fromarray(source), "PNG"), source, 0.0


def odd_good_images() -> dict[str, tuple[bytes, np.ndarray, float]]:
    """{file name: (bytes, expected HxWx3 uint8 RGB, max mean absolute error allowed)}."""
    makers = {
        "cmyk.jpg": _cmyk_jpeg,
        "gray16.png": _png16_gray,
        "rgb16.png": _png16_rgb,
        "float32.tif": _float_tiff,
        "multipage.tif": _multipage_tiff,
        "progressive.jpg": _progressive_jpeg,
        "palette_transparent.png": _palette_png_transparent,
        "gray_alpha_la.png": _la_png,
        "rgba_gradient.png": _rgba_png,
        "grayscale.jpg": _gray_jpeg,
        "exif_rotated.jpg": _exif_rotated_jpeg,
        "animated.gif": _animated_gif,
        "lossless.webp": _webp,
        "lzw.tif": _tiff_lzw,
        "plain.bmp": _bmp,
        "bilevel.png": _bilevel_png,
        "really_a_png.jpg": _png_named_jpg,
    }
    return {name: make() for name, make in makers.items()}


def write_odd_good_images(directory: Path) -> list[str]:
    """Write the unusual-but-valid images into ``directory``; returns their file names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for name, (data, _expected, _tolerance) in odd_good_images().items():
        (directory / name).write_bytes(data)
        names.append(name)
    return names
