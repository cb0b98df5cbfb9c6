"""Images without matplotlib or Pillow: a stdlib-zlib PNG codec, grids, borders, a 5x7 font.

Everything here is NumPy on the host (pass `jax.Array`s freely; they are converted with
`np.asarray`). Images are `uint8` arrays `(H, W, 3)` (RGB) unless a docstring says otherwise;
functions that take an image also accept float images in `[-1, 1]` (the VQ decoder's output),
converted with `to_uint8`, and grey `(H, W)` images, repeated to three channels.

Public API:
  * `to_uint8(images)`: float in `[-1, 1]` (any shape) -> `uint8` in `[0, 255]`.
  * `encode_png(image) -> bytes` / `decode_png(data) -> (H, W, 3) uint8`.
  * `write_png(path, image) -> str` (atomic) / `read_png(path) -> (H, W, 3) uint8`.
  * `atomic_write_bytes(path, data) -> str`: temp file in the same folder, then `os.replace`.
  * `make_grid`, `mark_border`, `draw_text`, `text_size`, `upscale_nearest`, `labelled_grid`.

The encoder writes 8-bit grey / RGB / RGBA, non-interlaced, filter type 0 on every row.
The decoder reads any non-interlaced PNG of bit depth 1-16 in every colour type (grey,
RGB, palette, grey+alpha, RGBA) with all five filter types, so files from Pillow or
matplotlib read back; alpha is dropped (not composited), 16-bit samples are rounded to 8.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Mapping, Sequence

import numpy as np

from scalingar_jax.atomic import atomic_write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

__all__ = [
    "PNG_SIGNATURE", "COLORS", "FONT_CHARS", "to_uint8", "encode_png", "decode_png", "write_png",
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




# ----------------------------------------------------------------------------- PNG encode
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image, compress_level: int = 6) -> bytes:
    """PNG bytes of `image`: uint8 `(H, W)` / `(H, W, 1)` grey, `(H, W, 3)` RGB, `(H, W, 4)` RGBA,
    or a float image in `[-1, 1]` of those shapes (via `to_uint8`). 8-bit, filter type 0 per row."""
    x = _as_image(image, "image", channels=(1, 3, 4))
    if isinstance(compress_level, bool) or not isinstance(compress_level, (int, np.integer)) \
            or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be an int in [0, 9], got {compress_level!r}")
    h, w, c = x.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(x).reshape(h, w * c)], axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), int(compress_level))) + _chunk(b"IEND", b""))


def write_png(path, image, compress_level: int = 6) -> str:
    """Writes `image` (see `encode_png` for accepted shapes/dtypes) to `path` atomically; returns `str(path)`.

    Input errors (`TypeError`/`ValueError`) are raised before anything touches the disk;
    folder problems raise as in `atomic_write_bytes`. The parent folder is not created.
    """
    return atomic_write_bytes(path, encode_png(image, compress_level))


# ----------------------------------------------------------------------------- PNG decode
_VALID_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _unfilter(raw: bytes, h: int, rowbytes: int, bpp: int) -> np.ndarray:
    """Reverses the per-row PNG filters (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) -> (h, rowbytes) uint8."""
    src = np.frombuffer(raw, np.uint8).reshape(h, rowbytes + 1)
    out = np.empty((h, rowbytes), np.uint8)
    prev = np.zeros(rowbytes, np.uint8)
    for y in range(h):
        ftype = int(src[y, 0])
        f = src[y, 1:]
        if ftype == 0:
            cur = f
        elif ftype == 1:  # Sub: running sum (mod 256) over pixels, per byte of a pixel
            cur = np.cumsum(f.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif ftype == 2:  # Up
            cur = f + prev
        elif ftype in (3, 4):
            fb, pb = f.tobytes(), prev.tobytes()
            cb = bytearray(rowbytes)
            if ftype == 3:  # Average: floor((left + up) / 2)
                for i in range(bpp):
                    cb[i] = (fb[i] + (pb[i] >> 1)) & 255
                for i in range(bpp, rowbytes):
                    cb[i] = (fb[i] + ((cb[i - bpp] + pb[i]) >> 1)) & 255
            else:  # Paeth predictor; at the left edge a = c = 0 so the predictor is b
                for i in range(bpp):
                    cb[i] = (fb[i] + pb[i]) & 255
                for i in range(bpp, rowbytes):
                    a, b, c = cb[i - bpp], pb[i], pb[i - bpp]
                    pa, pbb = b - c, a - c
                    pc = abs(pa + pbb)
                    pa, pbb = abs(pa), abs(pbb)
                    pred = a if (pa <= pbb and pa <= pc) else (b if pbb <= pc else c)
                    cb[i] = (fb[i] + pred) & 255
            cur = np.frombuffer(bytes(cb), np.uint8)
        else:
            raise ValueError(f"invalid PNG: unknown filter type {ftype} on row {y}")
        out[y] = cur
        prev = out[y]
    return out


def decode_png(data: bytes) -> np.ndarray:
    """Decodes PNG bytes -> uint8 `(H, W, 3)` RGB (grey repeated, palette looked up, alpha dropped).

    Checks the signature, every chunk CRC and the data length; raises `ValueError` naming the
    problem for malformed or unsupported (interlaced) files.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_png expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file: bad signature")
    pos, ihdr, plte, idat, ended = 8, None, None, [], False
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("invalid PNG: truncated chunk header")
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        crc = data[pos + 8 + n:pos + 12 + n]
        if len(body) != n or len(crc) != 4:
            raise ValueError(f"invalid PNG: truncated {kind!r} chunk")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"invalid PNG: CRC mismatch in {kind!r} chunk")
        pos += 12 + n
        if kind == b"IHDR":
            if n != 13:
                raise ValueError("invalid PNG: IHDR must be 13 bytes")
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ihdr is None:
            raise ValueError(f"invalid PNG: {kind!r} chunk before IHDR")
        elif kind == b"PLTE":
            if n % 3 or n == 0:
                raise ValueError("invalid PNG: PLTE length is not a positive multiple of 3")
            plte = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            ended = True
            break
        elif not (kind[0] & 0x20):  # uppercase first letter: critical chunk we do not know
            raise ValueError(f"unsupported PNG: unknown critical chunk {kind!r}")
    if ihdr is None:
        raise ValueError("invalid PNG: no IHDR chunk")
    if not ended:
        raise ValueError("invalid PNG: no IEND chunk (truncated file?)")
    if not idat:
        raise ValueError("invalid PNG: no IDAT chunk")
    w, h, depth, ctype, comp, filt, interlace = ihdr
    if w == 0 or h == 0:
        raise ValueError(f"invalid PNG: size {w}x{h}")
    if ctype not in _VALID_DEPTHS or depth not in _VALID_DEPTHS[ctype]:
        raise ValueError(f"invalid PNG: colour type {ctype} with bit depth {depth}")
    if comp != 0 or filt != 0:
        raise ValueError(f"invalid PNG: compression method {comp} / filter method {filt}")
    if interlace != 0:
        raise ValueError("unsupported PNG: interlaced (Adam7) images are not supported")
    if ctype == 3 and plte is None:
        raise ValueError("invalid PNG: palette image without PLTE chunk")
    ch = _CHANNELS[ctype]
    bits = ch * depth
    rowbytes = (w * bits + 7) // 8
    bpp = max(1, bits // 8)
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"invalid PNG: corrupt image data ({e})") from e
    if len(raw) != h * (rowbytes + 1):
        raise ValueError(f"invalid PNG: image data has {len(raw)} bytes, expected {h * (rowbytes + 1)}")
    rows = _unfilter(raw, h, rowbytes, bpp)
    if depth == 8:
        s = rows.reshape(h, w, ch)
    elif depth == 16:
        v = rows.view(">u2").reshape(h, w, ch).astype(np.uint32)
        s = ((v * 255 + 32767) // 65535).astype(np.uint8)
    else:
        unpacked = np.unpackbits(rows, axis=1).reshape(h, -1, depth)
        weights = (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8)
        s = (unpacked * weights).sum(-1, dtype=np.uint8)[:, :w].reshape(h, w, 1)
        if ctype == 0:
            s = (s.astype(np.uint16) * 255 // ((1 << depth) - 1)).astype(np.uint8)
    if ctype == 3:
        idx = s[:, :, 0]
        if int(idx.max()) >= len(plte):
            raise ValueError(f"invalid PNG: palette index {int(idx.max())} >= palette size {len(plte)}")
        return plte[idx]
    if ctype in (0, 4):
        return np.repeat(s[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(s[:, :, :3])


def read_png(path) -> np.ndarray:
    """Reads a PNG file -> uint8 `(H, W, 3)` RGB. See `decode_png` for what is supported."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    with open(path, "rb") as f:
        return decode_png(f.read())


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


# ----------------------------------------------------------------------------- 5x7 font
# Each glyph: 7 rows of 5 columns, '#' = ink. Lower case has its own glyphs; descenders are
# squeezed into the 7 rows. Drawn by hand for this project.
_GLYPHS: dict[str, tuple[str, ...]] = {
    " ": (".....",) * 7,
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "a": (".....", ".....", ".###.", "....#", ".####", "#...#", ".####"),
    "b": ("#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."),
    "c": (".....", ".....", ".###.", "#....", "#....", "#...#", ".###."),
    "d": ("....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"),
    "e": (".....", ".....", ".###.", "#...#", "#####", "#....", ".###."),
    "f": ("..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."),
    "g": (".....", ".####", "#...#", "#...#", ".####", "....#", ".###."),
    "h": ("#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "i": ("..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."),
    "j": ("...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##.."),
    "k": ("#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."),
    "l": (".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "m": (".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"),
    "n": (".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "o": (".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."),
    "p": (".....", ".....", "####.", "#...#", "####.", "#....", "#...."),
    "q": (".....", ".....", ".####", "#...#", ".####", "....#", "....#"),
    "r": (".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."),
    "s": (".....", ".....", ".####", "#....", ".###.", "....#", "####."),
    "t": (".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."),
    "u": (".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"),
    "v": (".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "w": (".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."),
    "x": (".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "y": (".....", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
    "z": (".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ",": (".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    ";": (".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."),
    "!": ("..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."),
    "?": (".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "+": (".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "_": (".....", ".....", ".....", ".....", ".....", ".....", "#####"),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "\\": (".....", "#....", ".#...", "..#..", "...#.", "....#", "....."),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    "@": (".###.", "#...#", "#.###", "#.#.#", "#.###", "#....", ".####"),
    "%": ("##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "[": (".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."),
    "]": (".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."),
    "<": ("...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."),
    ">": (".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."),
    "'": ("..#..", "..#..", ".#...", ".....", ".....", ".....", "....."),
    '"': (".#.#.", ".#.#.", ".#.#.", ".....", ".....", ".....", "....."),
    "*": (".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."),
    "&": (".##..", "#..#.", "#.#..", ".#...", "#.#.#", "#..#.", ".##.#"),
    "|": ("..#..",) * 7,
    "^": ("..#..", ".#.#.", "#...#", ".....", ".....", ".....", "....."),
    "~": (".....", ".....", ".#...", "#.#.#", "...#.", ".....", "....."),
}
FONT_CHARS = frozenset(_GLYPHS)
GLYPH_W, GLYPH_H = 5, 7
_ADVANCE_X, _ADVANCE_Y = GLYPH_W + 1, GLYPH_H + 1


def _glyph(ch: str) -> np.ndarray:
    return np.array([[p == "#" for p in row] for row in _GLYPHS[ch]], dtype=bool)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """`(width, height)` in pixels of `text` drawn by `draw_text` (lines split on '\\n').

    Each glyph is 5x7 cells of `scale` pixels with one cell between glyphs and between lines.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    scale = _positive_int(scale, "scale")
    lines = text.split("\n")
    longest = max(len(line) for line in lines)
    if longest == 0:
        return 0, 0
    return (longest * _ADVANCE_X - 1) * scale, (len(lines) * _ADVANCE_Y - 1) * scale


def draw_text(image, text: str, xy=(1, 1), color="white", scale: int = 1, background=None) -> np.ndarray:
    """A copy of `image` `(H, W, 3)` with `text` drawn in the built-in 5x7 font.

    `xy = (x, y)` is the top-left pixel (column, row) of the text box; `scale` is an integer
    pixel size; `background` (optional colour) fills the text box plus a `scale`-pixel margin
    first, for legibility. Supports digits, A-Z, a-z, space and ``.,:;!?-+=_/\\#@%()[]<>'"*&|^~``;
    other characters raise `ValueError`. Text that falls outside the image is clipped.
    """
    out = _as_image(image).copy()
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    bad = sorted(set(text) - FONT_CHARS - {"\n"})
    if bad:
        raise ValueError(f"draw_text: no glyph for {''.join(bad)!r}; supported: {''.join(sorted(FONT_CHARS))!r}")
    scale = _positive_int(scale, "scale")
    try:
        x0, y0 = (int(v) for v in xy)
    except (TypeError, ValueError) as e:
        raise TypeError(f"xy must be an (x, y) pair of ints, got {xy!r}") from e
    ink = _color(color)
    h, w = out.shape[:2]

    def fill(mask_or_none, top, left, hh, ww, col):
        ys, xs = max(top, 0), max(left, 0)
        ye, xe = min(top + hh, h), min(left + ww, w)
        if ys >= ye or xs >= xe:
            return
        region = out[ys:ye, xs:xe]
        if mask_or_none is None:
            region[:] = col
        else:
            region[mask_or_none[ys - top:ye - top, xs - left:xe - left]] = col

    if background is not None:
        tw, th = text_size(text, scale)
        fill(None, y0 - scale, x0 - scale, th + 2 * scale, tw + 2 * scale, _color(background, "background"))
    for li, line in enumerate(text.split("\n")):
        for ci, ch in enumerate(line):
            if ch == " ":
                continue
            mask = upscale_nearest(_glyph(ch), scale)
            fill(mask, y0 + li * _ADVANCE_Y * scale, x0 + ci * _ADVANCE_X * scale,
                 GLYPH_H * scale, GLYPH_W * scale, ink)
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
