"""Images on the host: PNG files and text labels through Pillow, grids and borders in NumPy.

Everything here is NumPy on the host (pass `jax.Array`s freely; they are converted with
`np.asarray`). Images are `uint8` arrays `(H, W, 3)` (RGB) unless a docstring says otherwise;
functions that take an image also accept float images in `[-1, 1]` (the VQ decoder's output),
converted with `to_uint8` (the one [-1, 1] -> uint8 conversion of the package), and grey
`(H, W)` images, repeated to three channels.

Public API:
  * `to_uint8(images)`: float in `[-1, 1]` (any shape) -> `uint8` in `[0, 255]`.
  * `encode_png(image) -> bytes` / `decode_png(data) -> (H, W, 3) uint8`.
  * `write_png(path, image) -> str` (atomic) / `read_png(path) -> (H, W, 3) uint8`.
  * `atomic_write_bytes(path, data) -> str`: temp file in the same folder, then `os.replace`.
  * `make_grid`, `mark_border`, `draw_text`, `text_size`, `upscale_nearest`, `labelled_grid`.

PNG files are written and read by Pillow. Readers check the size a file declares against
`MAX_PIXELS` before decoding anything, verify every chunk's CRC, and return RGB: grey is
repeated, palettes are looked up, alpha is dropped (not composited), 16-bit grey is rounded to
8 bits. Text is drawn with Pillow's built-in default font (`ImageFont.load_default()`, no font
file), without anti-aliasing.
"""
from __future__ import annotations

import functools
import io
import math
import os
import zlib
from typing import Mapping, Sequence

import numpy as np

from scalingar_jax.atomic import atomic_write_bytes
from scalingar_jax.inputs import open_regular

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Readers refuse larger images before decoding them (a 4096 x 4096 RGB image is 48 MiB decoded).
MAX_PIXELS = 4096 * 4096

__all__ = [
    "PNG_SIGNATURE", "MAX_PIXELS", "COLORS", "FONT_CHARS", "to_uint8", "encode_png", "decode_png", "write_png",
    "read_png", "atomic_write_bytes", "make_grid", "mark_border", "draw_text", "text_size",
    "upscale_nearest", "labelled_grid",
]
# Named colours accepted wherever a `color` is (RGB, 0-255).
COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (20, 170, 60), "blue": (30, 80, 220), "yellow": (240, 200, 20),
    "orange": (245, 130, 20), "white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}


# ----------------------------------------------------------------------------- conversions
def to_uint8(images) -> np.ndarray:
    """Float images in `[-1, 1]` (any shape) -> `uint8` `round((x + 1) * 127.5)`, clipped to [0, 255].

    `uint8` input is returned unchanged (as a NumPy array). Raises `TypeError` for bool and
    non-`uint8` integer dtypes (cast them explicitly) and `ValueError` for NaN / inf.
    """
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"to_uint8 expects float images in [-1, 1] (or uint8), got dtype {x.dtype}; "
                        "cast integer images to uint8 explicitly")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("to_uint8: images contain NaN or inf")
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _as_image(image, name: str = "image", channels: Sequence[int] = (3,)) -> np.ndarray:
    """uint8 (H, W, C) with C in `channels`; floats go through to_uint8, grey (H, W) is repeated."""
    x = to_uint8(image)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got shape {x.shape}")
    if x.shape[2] not in channels:
        if x.shape[2] == 1 and 3 in channels:
            x = np.repeat(x, 3, axis=2)
        else:
            raise ValueError(f"{name} must have {' or '.join(map(str, channels))} channels, got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be at least 1x1, got shape {x.shape}")
    return x


def _color(color, name: str = "color") -> np.ndarray:
    """A colour name, a grey level int, or an (r, g, b) triple -> uint8 (3,)."""
    if isinstance(color, str):
        if color.lower() not in COLORS:
            raise ValueError(f"unknown {name} {color!r}; expected one of {sorted(COLORS)} or an (r, g, b) triple")
        return np.array(COLORS[color.lower()], np.uint8)
    c = np.asarray(color)
    if c.dtype == np.bool_ or not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
        raise TypeError(f"{name} must be a name, an int or an (r, g, b) triple, got {color!r}")
    if c.ndim == 0:
        c = np.repeat(c, 3)
    if c.shape != (3,) or np.any(c < 0) or np.any(c > 255) or not np.all(np.isfinite(c)):
        raise ValueError(f"{name} must be an (r, g, b) triple of values in [0, 255], got {color!r}")
    return np.rint(c).astype(np.uint8)


def _positive_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


# ----------------------------------------------------------------------------- PNG (Pillow)
def encode_png(image, compress_level: int = 6) -> bytes:
    """PNG bytes of `image`: uint8 `(H, W)` / `(H, W, 1)` grey, `(H, W, 3)` RGB, `(H, W, 4)` RGBA,
    or a float image in `[-1, 1]` of those shapes (via `to_uint8`). 8 bits per sample."""
    from PIL import Image

    x = _as_image(image, "image", channels=(1, 3, 4))
    if isinstance(compress_level, bool) or not isinstance(compress_level, (int, np.integer)) \
            or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be an int in [0, 9], got {compress_level!r}")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[x.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(x[:, :, 0] if mode == "L" else x), mode).save(
        buf, format="PNG", compress_level=int(compress_level))
    return buf.getvalue()


def write_png(path, image, compress_level: int = 6) -> str:
    """Writes `image` (see `encode_png` for accepted shapes/dtypes) to `path` atomically; returns `str(path)`.

    Input errors (`TypeError`/`ValueError`) are raised before anything touches the disk;
    folder problems raise as in `atomic_write_bytes`. The parent folder is not created.
    """
    return atomic_write_bytes(path, encode_png(image, compress_level))


def _check_max_pixels(max_pixels) -> int:
    return _positive_int(max_pixels, "max_pixels")


def _read_png(open_fp, name: str, max_pixels: int) -> np.ndarray:
    """Decodes the PNG that `open_fp()` opens (a fresh binary file object per call) -> uint8
    (H, W, 3). The declared size is checked against `max_pixels` before any pixel is decoded,
    then every chunk's CRC (`verify`), then the image is decoded."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = _check_max_pixels(max_pixels)
    with open_fp() as f:
        if f.read(8) != PNG_SIGNATURE:
            raise ValueError(f"{name} is not a PNG file: bad signature")
        f.seek(0)
        try:
            im = Image.open(f, formats=["PNG"])
        except Image.DecompressionBombError as e:
            raise ValueError(f"{name}: declared image size exceeds the limit of {max_pixels} pixels ({e})") from None
        except UnidentifiedImageError:
            raise ValueError(f"{name}: invalid PNG: its IHDR header chunk is malformed or fails its CRC") from None
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{name}: declared size {w}x{h} ({w * h} pixels) exceeds the limit of {max_pixels} "
                             "pixels; refused before decoding")
        try:
            im.verify()  # every chunk's CRC, through IEND; decodes nothing
        except (OSError, SyntaxError, EOFError, ValueError) as e:
            raise ValueError(f"{name}: invalid PNG (truncated or corrupt): {e}") from None
    with open_fp() as f:
        try:
            im = Image.open(f, formats=["PNG"])
            im.load()
        except (OSError, SyntaxError, EOFError, ValueError, zlib.error) as e:
            raise ValueError(f"{name}: invalid PNG (corrupt image data): {e}") from None
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: round to 8 bits
            v = np.asarray(im).astype(np.uint32)
            return np.repeat(((v * 255 + 32767) // 65535).astype(np.uint8)[:, :, None], 3, axis=2)
        return np.array(im.convert("RGB"), dtype=np.uint8)


def decode_png(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes PNG bytes -> uint8 `(H, W, 3)` RGB (grey repeated, palette looked up, alpha dropped).

    Raises `ValueError` naming the problem for a bad signature, a declared size over
    `max_pixels` (before decoding), a CRC mismatch, truncated or corrupt data.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_png expects bytes, got {type(data).__name__}")
    data = bytes(data)
    return _read_png(lambda: io.BytesIO(data), "PNG bytes", max_pixels)


def read_png(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Reads a PNG file -> uint8 `(H, W, 3)` RGB. See `decode_png`; errors name the file (a FIFO
    or device is refused unread: `inputs.open_regular`)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return _read_png(lambda: open_regular(path, repr(os.fspath(path))), os.fspath(path), max_pixels)


# ----------------------------------------------------------------------------- grids & marks
def make_grid(images, ncols: int | None = None, pad: int = 2, pad_value=255) -> np.ndarray:
    """Tiles `images` `(N, H, W, 3)` (uint8, or float in [-1, 1]) row-major into one uint8 image.

    `ncols` defaults to `ceil(sqrt(N))` and is capped at N; `rows = ceil(N / ncols)`. Output shape:
    `(rows * H + (rows + 1) * pad, ncols * W + (ncols + 1) * pad, 3)`: `pad` pixels of `pad_value`
    (a grey level, a colour name or an (r, g, b) triple) around and between tiles; empty trailing
    cells are `pad_value` too. A sequence of equally shaped `(H, W, 3)` images is accepted.
    """
    x = to_uint8(np.stack([np.asarray(i) for i in images]) if isinstance(images, (list, tuple)) else images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"make_grid expects images of shape (N, H, W, 3), got {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    n, h, w, _ = x.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"make_grid needs at least one non-empty image, got shape {x.shape}")
    ncols = math.ceil(math.sqrt(n)) if ncols is None else _positive_int(ncols, "ncols")
    ncols = min(ncols, n)
    pad = _positive_int(pad, "pad", minimum=0)
    rows = math.ceil(n / ncols)
    out = np.empty((rows * h + (rows + 1) * pad, ncols * w + (ncols + 1) * pad, 3), np.uint8)
    out[:] = _color(pad_value, "pad_value")
    for i in range(n):
        r, c = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
        out[y0:y0 + h, x0:x0 + w] = x[i]
    return out


def mark_border(image, color="red", width: int = 2) -> np.ndarray:
    """A copy of `image` `(H, W, 3)` with its outer `width` pixels set to `color` (size unchanged).

    Use e.g. red for pruned candidates and green for the winner. `width=0` returns a copy.
    """
    out = _as_image(image).copy()
    width = _positive_int(width, "width", minimum=0)
    if width:
        c = _color(color)
        out[:width], out[-width:], out[:, :width], out[:, -width:] = c, c, c, c
    return out


def upscale_nearest(image, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer `factor`: `(H, W[, C])` -> `(H*f, W*f[, C])`,
    `(N, H, W, C)` -> `(N, H*f, W*f, C)`. Dtype is kept."""
    x = np.asarray(image)
    factor = _positive_int(factor, "factor")
    if x.ndim in (2, 3):
        axes = (0, 1)
    elif x.ndim == 4:
        axes = (1, 2)
    else:
        raise ValueError(f"upscale_nearest expects (H, W), (H, W, C) or (N, H, W, C), got shape {x.shape}")
    if factor == 1:
        return x.copy()
    return np.repeat(np.repeat(x, factor, axis=axes[0]), factor, axis=axes[1])


# ----------------------------------------------------------------------------- text (Pillow's default font)
FONT_CHARS = frozenset(chr(c) for c in range(32, 127))  # printable ASCII


@functools.lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _text_mask(text: str) -> np.ndarray:
    """Bool (h, w) ink mask of `text` at scale 1 (lines split on '\\n'); (0, 0) for blank text."""
    from PIL import Image, ImageDraw

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    bad = sorted(set(text) - FONT_CHARS - {"\n"})
    if bad:
        raise ValueError(f"draw_text: no glyph for {''.join(bad)!r}; supported: printable ASCII and '\\n'")
    probe = ImageDraw.Draw(Image.new("1", (1, 1)))
    _, _, right, bottom = probe.multiline_textbbox((0, 0), text, font=_font())
    if right <= 0 or bottom <= 0:
        return np.zeros((0, 0), bool)
    canvas = Image.new("1", (int(right), int(bottom)), 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # no anti-aliasing: every pixel is ink or not
    draw.multiline_text((0, 0), text, fill=1, font=_font())
    return np.array(canvas, dtype=bool)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """`(width, height)` in pixels of the box `draw_text` draws `text` in (lines split on '\\n');
    `scale` multiplies both. (0, 0) for blank text."""
    scale = _positive_int(scale, "scale")
    h, w = _text_mask(text).shape
    return w * scale, h * scale


def draw_text(image, text: str, xy=(1, 1), color="white", scale: int = 1, background=None) -> np.ndarray:
    """A copy of `image` `(H, W, 3)` with `text` drawn in Pillow's default font.

    `xy = (x, y)` is the top-left pixel (column, row) of the text box (`text_size`); `scale` is
    an integer pixel size (nearest-neighbour); `background` (optional colour) fills the text box
    plus a `scale`-pixel margin first, for legibility. Printable ASCII only; other characters
    raise `ValueError`. Text that falls outside the image is clipped.
    """
    out = _as_image(image).copy()
    scale = _positive_int(scale, "scale")
    mask = upscale_nearest(_text_mask(text), scale)
    try:
        x0, y0 = (int(v) for v in xy)
    except (TypeError, ValueError) as e:
        raise TypeError(f"xy must be an (x, y) pair of ints, got {xy!r}") from e
    ink = _color(color)
    h, w = out.shape[:2]

    def fill(region_mask, top, left, hh, ww, col):
        ys, xs, ye, xe = max(top, 0), max(left, 0), min(top + hh, h), min(left + ww, w)
        if ys >= ye or xs >= xe:
            return
        region = out[ys:ye, xs:xe]
        if region_mask is None:
            region[:] = col
        else:
            region[region_mask[ys - top:ye - top, xs - left:xe - left]] = col

    th, tw = mask.shape
    if background is not None:
        fill(None, y0 - scale, x0 - scale, th + 2 * scale, tw + 2 * scale, _color(background, "background"))
    fill(mask, y0, x0, th, tw, ink)
    return out


def labelled_grid(images, labels: Sequence[str] | None = None, border_colors: Sequence | None = None,
                  ncols: int | None = None, factor: int = 4, border: int = 2, pad: int = 4,
                  pad_value=255, text_scale: int = 1) -> np.ndarray:
    """Candidate grid: upscale `(N, H, W, 3)` by `factor`, outline tile i in `border_colors[i]`
    (None = no outline), write `labels[i]` (white on black) in its top-left corner, then
    `make_grid`. Output shape as `make_grid` with tiles `(H * factor, W * factor)`."""
    x = to_uint8(np.stack([np.asarray(i) for i in images]) if isinstance(images, (list, tuple)) else images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"labelled_grid expects images of shape (N, H, W, 3), got {x.shape}")
    n = x.shape[0]
    for name, seq in (("labels", labels), ("border_colors", border_colors)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries but there are {n} images")
    tiles = []
    for i, img in enumerate(upscale_nearest(x, factor)):
        if border_colors is not None and border_colors[i] is not None:
            img = mark_border(img, border_colors[i], border)
        if labels is not None and labels[i]:
            off = border + 2 * text_scale
            img = draw_text(img, labels[i], (off, off), "white", text_scale, background="black")
        tiles.append(img)
    return make_grid(np.stack(tiles), ncols=ncols, pad=pad, pad_value=pad_value)
