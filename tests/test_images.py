"""images.py (PNG I/O through Pillow, grids, borders, text labels) and viz.py (matplotlib plots); all fast."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scalingar_jax import images
from scalingar_jax.images import (
    PNG_SIGNATURE, decode_png, draw_text, encode_png, labelled_grid, make_grid, mark_border, read_png,
    text_size, to_uint8, upscale_nearest, write_png,
)

try:
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None
needs_pil = pytest.mark.skipif(Image is None, reason="Pillow not installed")


def _rand(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _as_rgb(a):
    a = a[..., None] if a.ndim == 2 else a
    return np.repeat(a, 3, -1) if a.shape[-1] == 1 else a[..., :3]


# ----------------------------------------------------------------------------- round trips
@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 17), st.integers(1, 17), st.sampled_from([1, 3, 4]))))
def test_round_trip_exact(img):
    chan = img.shape[-1]
    x = img[..., 0] if chan == 1 and img.shape[0] % 2 else img  # (H, W) and (H, W, 1) both mean grey
    np.testing.assert_array_equal(decode_png(encode_png(x)), _as_rgb(img))


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (5, 1, 3), (13, 9, 3), (48, 48, 3), (3, 5)])
def test_write_read_file(tmp_path, shape):
    img = _rand(shape, seed=sum(shape))
    p = write_png(tmp_path / "a.png", img)
    assert p == str(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    out = read_png(p)
    assert out.dtype == np.uint8 and out.shape == shape[:2] + (3,)
    np.testing.assert_array_equal(out, _as_rgb(img))
    assert os.listdir(tmp_path) == ["a.png"]  # no temp files left behind


def test_encoder_writes_valid_chunks():
    data = encode_png(_rand((4, 6, 3)))
    pos, kinds = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        kinds.append(kind)
        if kind == b"IHDR":  # 6 x 4, 8-bit RGB, not interlaced
            assert struct.unpack(">IIBBBBB", body) == (6, 4, 8, 2, 0, 0, 0)
        pos += 12 + n
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds


def test_float_input_and_to_uint8(tmp_path):
    x = np.array([[-1.0, 0.0, 1.0], [-2.0, 2.0, 0.5]], np.float32)
    u = to_uint8(x)
    np.testing.assert_array_equal(u, [[0, 128, 255], [0, 255, 191]])
    assert to_uint8(u) is u
    write_png(tmp_path / "f.png", np.stack([x] * 3, -1))
    np.testing.assert_array_equal(read_png(tmp_path / "f.png")[..., 0], u)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.array([np.nan]))
    with pytest.raises(TypeError, match="uint8"):
        to_uint8(np.zeros(3, np.int32))


# ----------------------------------------------------------------------------- Pillow interop
@needs_pil
@pytest.mark.parametrize("chan", [1, 3, 4])
def test_pillow_decodes_ours_identically(chan):
    img = _rand((11, 7, chan), seed=chan)
    im = Image.open(io.BytesIO(encode_png(img)))
    np.testing.assert_array_equal(np.asarray(im).reshape(img.shape), img)


def _filter_rows(img2d, bpp, ftype):
    """Independent PNG filtering of uint8 rows (H, rowbytes) with one filter type on every row."""
    out, prev = [], np.zeros(img2d.shape[1], np.int64)
    for row in img2d.astype(np.int64):
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if ftype == 0:
            f = row
        elif ftype == 1:
            f = row - left
        elif ftype == 2:
            f = row - prev
        elif ftype == 3:
            f = row - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            f = row - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([ftype]) + (f % 256).astype(np.uint8).tobytes())
        prev = row
    return b"".join(out)


def _png_with_filter(img, ftype):
    h, w, c = img.shape
    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    raw = _filter_rows(img.reshape(h, w * c), c, ftype)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("chan", [1, 2, 3, 4])
def test_each_filter_type(ftype, chan):
    rng = np.random.default_rng(10 * ftype + chan)
    y, x = np.mgrid[0:9, 0:13]
    img = ((y[..., None] * 37 + x[..., None] * 11 * np.arange(1, chan + 1) + rng.integers(0, 40, (9, 13, chan)))
           % 256).astype(np.uint8)
    data = _png_with_filter(img, ftype)
    if Image is not None:  # the reference filter is right if Pillow agrees
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))).reshape(img.shape), img)
    np.testing.assert_array_equal(decode_png(data), _as_rgb(img[..., :1] if chan == 2 else img))


@needs_pil
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "P2", "1", "I;16"])
def test_reads_pillow_files(tmp_path, mode):
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:30, 0:37]
    smooth = np.stack([(x * 5) % 256, (y * 6) % 256, (x + y) * 3 % 256], -1).astype(np.uint8)
    smooth[15:] = rng.integers(0, 256, (15, 37, 3))  # noisy half: adaptive filtering mixes types
    kw = {}
    if mode in ("RGB", "RGBA", "L", "LA"):
        im = Image.fromarray(smooth).convert(mode)
        expect = np.asarray(im.convert("RGB"))
    elif mode in ("P", "P2"):
        im = Image.fromarray(smooth).quantize(4 if mode == "P2" else 200)
        kw = {"bits": 2} if mode == "P2" else {}
        expect = np.asarray(im.convert("RGB"))
    elif mode == "1":
        im = Image.fromarray(smooth[..., 0] > 127)
        expect = np.repeat((np.asarray(im) * 255).astype(np.uint8)[..., None], 3, -1)
    else:
        v = (smooth[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, (30, 37))).astype(np.uint16)
        im = Image.fromarray(v)
        expect = np.repeat(((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, -1)
    path = tmp_path / "p.png"
    im.save(path, optimize=True, **kw)
    np.testing.assert_array_equal(read_png(path), expect)


# ----------------------------------------------------------------------------- errors & atomicity
@pytest.mark.parametrize("bad, exc, msg", [
    (np.zeros((4, 4, 3), np.int32), TypeError, "uint8"),
    (np.zeros((4, 4, 3), bool), TypeError, "uint8"),
    (np.zeros((4, 4, 2), np.uint8), ValueError, "channels"),
    (np.zeros((2, 4, 4, 3), np.uint8), ValueError, "shape"),
    (np.zeros((4,), np.uint8), ValueError, "shape"),
    (np.zeros((0, 4, 3), np.uint8), ValueError, "1x1"),
])
def test_write_png_bad_input(tmp_path, bad, exc, msg):
    (tmp_path / "keep.png").write_bytes(b"old")
    with pytest.raises(exc, match=msg):
        write_png(tmp_path / "keep.png", bad)
    assert (tmp_path / "keep.png").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.png"]


def test_write_png_bad_paths(tmp_path, monkeypatch):
    img = _rand((2, 2, 3))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_png(tmp_path / "nope" / "a.png", img)
    with pytest.raises(IsADirectoryError):
        write_png(tmp_path, img)
    with pytest.raises(TypeError, match="path"):
        write_png(3, img)
    # a failure at the rename leaves neither a partial file nor a temp file
    (tmp_path / "a.png").write_bytes(b"old")
    def boom(*a):
        raise OSError("disk full")
    monkeypatch.setattr(images.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_png(tmp_path / "a.png", img)
    assert (tmp_path / "a.png").read_bytes() == b"old" and os.listdir(tmp_path) == ["a.png"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_png_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            write_png(ro / "a.png", _rand((2, 2, 3)))
    finally:
        ro.chmod(0o755)


def test_decode_png_rejects_garbage():
    good = encode_png(_rand((3, 3, 3)))
    with pytest.raises(ValueError, match="signature"):
        decode_png(b"GIF89a" + good[6:])
    corrupt = bytearray(good)
    corrupt[20] ^= 1  # inside IHDR
    with pytest.raises(ValueError, match="CRC"):
        decode_png(bytes(corrupt))
    with pytest.raises(ValueError, match="truncated|IEND"):
        decode_png(good[:-14])


def _png_declaring(w, h):
    """A PNG whose IHDR declares w x h RGB but whose data holds one row: decoding it would fail."""
    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 7)) + chunk(b"IEND", b"")


@needs_pil
@pytest.mark.parametrize("w, h", [(5000, 5000), (100_000, 100_000)])  # over MAX_PIXELS; over Pillow's own bomb limit
def test_oversized_declared_png_refused_before_decode(tmp_path, monkeypatch, w, h):
    from PIL import ImageFile

    def no_decode(self, *a, **k):
        raise AssertionError("decoded an image whose declared size is over the limit")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    path = tmp_path / "big.png"
    path.write_bytes(_png_declaring(w, h))
    with pytest.raises(ValueError, match=r"big\.png.*(exceeds the limit)") as e:
        read_png(path)
    if w == 5000:
        assert "5000x5000" in str(e.value)
    with pytest.raises(ValueError, match="exceeds the limit"):
        decode_png(path.read_bytes())


def test_max_pixels_bound_is_a_parameter(tmp_path):
    p = write_png(tmp_path / "a.png", _rand((10, 12, 3)))
    assert read_png(p, max_pixels=120).shape == (10, 12, 3)
    with pytest.raises(ValueError, match=r"a\.png: declared size 12x10 \(120 pixels\) exceeds the limit of 119"):
        read_png(p, max_pixels=119)
    with pytest.raises(ValueError, match="max_pixels"):
        read_png(p, max_pixels=0)


# ----------------------------------------------------------------------------- grids, borders, text
@pytest.mark.parametrize("n, ncols, pad, rows, cols", [(1, 4, 2, 1, 1), (8, 4, 2, 2, 4), (7, 3, 0, 3, 3),
                                                        (5, None, 1, 2, 3), (9, None, 3, 3, 3)])
def test_make_grid_shape(n, ncols, pad, rows, cols):
    h, w = 5, 7
    imgs = _rand((n, h, w, 3))
    g = make_grid(imgs, ncols=ncols, pad=pad, pad_value=(1, 2, 3))
    assert g.dtype == np.uint8 and g.shape == (rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3)
    np.testing.assert_array_equal(g[pad:pad + h, pad:pad + w], imgs[0])
    last_r, last_c = divmod(n - 1, cols)
    y0, x0 = pad + last_r * (h + pad), pad + last_c * (w + pad)
    np.testing.assert_array_equal(g[y0:y0 + h, x0:x0 + w], imgs[-1])
    if pad:
        assert (g[0] == [1, 2, 3]).all()
    with pytest.raises(ValueError, match="ncols"):
        make_grid(imgs, ncols=0)


def test_mark_border_and_upscale():
    img = np.zeros((6, 8, 3), np.uint8)
    b = mark_border(img, "red", 2)
    red = np.array(images.COLORS["red"], np.uint8)
    assert (b[:2] == red).all() and (b[:, -2:] == red).all() and (b[2:-2, 2:-2] == 0).all()
    assert (img == 0).all()  # input untouched
    np.testing.assert_array_equal(mark_border(img, (0, 255, 0), 0), img)
    with pytest.raises(ValueError, match="unknown color"):
        mark_border(img, "mauve")
    u = upscale_nearest(_rand((3, 4, 3)), 3)
    assert u.shape == (9, 12, 3)
    np.testing.assert_array_equal(u[::3, ::3], _rand((3, 4, 3)))
    assert upscale_nearest(_rand((2, 3, 4, 3)), 2).shape == (2, 6, 8, 3)
    with pytest.raises(ValueError, match="factor"):
        upscale_nearest(u, 0)


def test_draw_text_box():
    img = np.zeros((30, 60, 3), np.uint8)
    w1, h1 = text_size("8", 1)
    assert text_size("8", 2) == (2 * w1, 2 * h1) and w1 > 0 and h1 > 0
    one = draw_text(img, "8", (3, 4), "white", scale=1)
    out = draw_text(img, "8", (3, 4), "white", scale=2)
    ys, xs = np.nonzero(out.any(-1))
    assert ys.min() >= 4 and ys.max() < 4 + 2 * h1 and xs.min() >= 3 and xs.max() < 3 + 2 * w1
    assert out.any(-1).sum() == 4 * one.any(-1).sum() > 0  # nearest-neighbour scaling of the same glyph
    assert np.unique(out.reshape(-1, 3), axis=0).tolist() == [[0, 0, 0], [255, 255, 255]]  # no anti-aliasing
    assert (img == 0).all()
    w, h = text_size("#3 pruned@57", 1)
    lab = draw_text(np.zeros((20, 120, 3), np.uint8), "#3 pruned@57", (1, 1))
    ys, xs = np.nonzero(lab.any(-1))
    assert xs.max() < 1 + w and ys.max() < 1 + h and len(np.unique(xs)) > 30
    # background box, clipping at the border, multi-line
    bg = draw_text(img, "winner\nok", (-3, 25), "green", background="black")
    assert bg.shape == img.shape
    assert text_size("ab\ncde")[1] > text_size("ab")[1] and text_size("") == (0, 0)
    with pytest.raises(ValueError, match="no glyph"):
        draw_text(img, "θ", (0, 0))


def test_labelled_grid():
    imgs = _rand((3, 12, 12, 3))
    g = labelled_grid(imgs, ["winner", "#1 pruned@57", ""], ["green", "red", None], ncols=3, factor=2, pad=4)
    assert g.shape == (24 + 8, 3 * 24 + 16, 3)
    green = np.array(images.COLORS["green"], np.uint8)
    assert (g[4, 4:28] == green).all()
    with pytest.raises(ValueError, match="labels"):
        labelled_grid(imgs, ["a"])


# ----------------------------------------------------------------------------- viz
def _traj(t=40, n=4):
    rng = np.random.default_rng(0)
    alive = np.ones((t, n), bool)
    alive[25:, 1] = False
    alive[12:, 2] = False
    c = 0.5 + rng.normal(0, 0.02, (t, n)).cumsum(0)
    return dict(C=c, threshold=np.where(np.arange(t) < 8, np.nan, 0.5), guidance=4 + rng.normal(0, 0.1, (t, n)),
                alive=alive, warmup_steps=8, winner=3)


def test_viz_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    from scalingar_jax import viz
    dpi = 30
    cases = [
        (viz.plot_confidence_trajectories, dict(traj=_traj(), title="run"), (6.0, 4.0)),
        (viz.plot_entropy_heatmap, dict(entropy=np.random.default_rng(0).random((6, 6)),
                                        image=_rand((12, 12, 3)), title="ent"), (6.0, 3.0)),
        (viz.plot_entropy_heatmap, dict(entropy=np.ones((4, 4))), (3.0, 3.0)),
        (viz.plot_lines, dict(xs=[1, 2, 4, 8], series={"a": [1, 2, 3, 4], "b": ([1, 1, 2, 2], [0.1] * 4)},
                              xlabel="N", ylabel="acc", title="t", logx=True), (5.0, 3.0)),
        (viz.plot_bars, dict(groups=["x", "y", "z"], series={"a": [1, 2, 3], "b": [3, 2, 1]}, ylabel="acc",
                             title="t", yerr={"a": [0.1, 0.2, 0.1]}), (5.0, 3.0)),
        (viz.plot_xy, dict(series={"a": ([144, 288, 576], [0.2, 0.3, 0.35]), "b": ([200, 400], [0.3, 0.4], [0.05, 0.05])},
                           xlabel="tokens", ylabel="acc", title="t", logx=True), (5.0, 3.0)),
    ]
    for i, (fn, kw, figsize) in enumerate(cases):
        path = tmp_path / f"{i}.png"
        assert fn(path, **kw, dpi=dpi, figsize=figsize) == str(path)
        assert path.stat().st_size > 0
        img = read_png(path)
        assert img.shape == (round(figsize[1] * dpi), round(figsize[0] * dpi), 3)
        assert img.std() > 0
    assert sorted(os.listdir(tmp_path)) == [f"{i}.png" for i in range(len(cases))]


def test_viz_bad_input(tmp_path):
    from scalingar_jax import viz
    t = _traj()
    del t["winner"]
    with pytest.raises(KeyError, match="winner"):
        viz.plot_confidence_trajectories(tmp_path / "a.png", t)
    t = _traj()
    t["alive"] = t["alive"][:, :2]
    with pytest.raises(ValueError, match="alive"):
        viz.plot_confidence_trajectories(tmp_path / "a.png", t)
    with pytest.raises(ValueError, match="suffix"):
        viz.plot_lines(tmp_path / "a.jpg", [1, 2], {"a": [1, 2]}, "x", "y")
    with pytest.raises(ValueError, match="2 xs"):
        viz.plot_lines(tmp_path / "a.png", [1, 2], {"a": [1, 2, 3]}, "x", "y")
    with pytest.raises(ValueError, match="one length"):
        viz.plot_xy(tmp_path / "a.png", {"a": ([1, 2], [1, 2, 3])}, "x", "y")
    with pytest.raises(ValueError, match="xs > 0"):
        viz.plot_xy(tmp_path / "a.png", {"a": ([0, 2], [1, 2])}, "x", "y", logx=True)
    with pytest.raises(KeyError, match="unknown series"):
        viz.plot_bars(tmp_path / "a.png", ["g"], {"a": [1]}, "y", yerr={"b": [1]})
    assert os.listdir(tmp_path) == []


def test_viz_without_matplotlib(tmp_path, monkeypatch):
    from scalingar_jax import viz
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(__import__("sys").modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'scalingar-jax\[viz\]'"):
        viz.plot_lines(tmp_path / "a.png", [1, 2], {"a": [1, 2]}, "x", "y")
