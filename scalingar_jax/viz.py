"""Plots for ScalingAR runs and experiments (matplotlib, the optional extra `viz`).

matplotlib is imported lazily inside each function; without it they raise `ImportError`
telling you to `pip install 'scalingar-jax[viz]'`. Figures are built with the object API and
rendered by the Agg canvas: pyplot, its global figure registry and any display are never
touched. Every function validates its input first (`KeyError`/`TypeError`/`ValueError`),
writes its file atomically (`images.atomic_write_bytes`) and returns the path as a `str`.
The output format follows the suffix of `path`: `.png` (default `dpi` 120), `.pdf` or `.svg`.
Layout is matplotlib's constrained layout, so a PNG is exactly `figsize * dpi` pixels.
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import numpy as np

from scalingar_jax import images

__all__ = ["plot_confidence_trajectories", "plot_entropy_heatmap", "plot_lines", "plot_bars"]

_INSTALL_HINT = "plotting needs matplotlib: pip install 'scalingar-jax[viz]'"
_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
# Candidate colours: tab10 without its green and red, which mean "winner" and "pruned".
_CANDIDATE_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                     "tab:olive", "tab:cyan")
_WINNER_COLOR = "tab:green"
_PRUNED_COLOR = "tab:red"


def _figure(figsize, layout="constrained"):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _format_of(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    suffix = os.path.splitext(os.fsdecode(os.fspath(path)))[1].lower()
    if suffix not in _FORMATS:
        raise ValueError(f"unsupported plot file suffix {suffix!r} in {os.fspath(path)!r}; use one of {sorted(_FORMATS)}")
    return _FORMATS[suffix]


def _check_folder(path) -> None:
    folder = os.path.dirname(os.path.abspath(os.fsdecode(os.fspath(path))))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: folder {folder!r} does not exist")


def _save(fig, path, dpi) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format=_format_of(path), dpi=dpi)
    return images.atomic_write_bytes(path, buf.getvalue())


def _check_common(path, dpi, figsize) -> None:
    _format_of(path)
    _check_folder(path)
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.integer, np.floating)) or not dpi > 0:
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    if len(figsize) != 2 or not all(float(v) > 0 for v in figsize):
        raise ValueError(f"figsize must be (width, height) in inches, both > 0, got {figsize!r}")


def _float_array(x, name: str, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be numeric, got {type(x).__name__}") from e
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------- ScalingAR run
def plot_confidence_trajectories(path, traj: Mapping[str, object], title: str | None = None, *,
                                 dpi: float = 120, figsize=(10.0, 6.5)) -> str:
    """Two stacked panels of a ScalingAR run over decoding steps t = 0..T-1.

    `traj` keys: `C` `(T, N)` float confidence per candidate; `threshold` `(T,)` EMA threshold
    θ (NaN where undefined); `guidance` `(T, N)` float CFG scale; `alive` `(T, N)` bool;
    `warmup_steps` int; `winner` int (or None / -1 for none). Top: C per candidate (the line
    ends where the candidate is terminated, marked with a red ×; any later values are grey),
    the winner thick green, θ dashed black, the warm-up shaded. Bottom: guidance per candidate.
    """
    missing = [k for k in ("C", "threshold", "guidance", "alive", "warmup_steps", "winner") if k not in traj]
    if missing:
        raise KeyError(f"traj is missing {missing}; expected C, threshold, guidance, alive, warmup_steps, winner")
    conf = _float_array(traj["C"], "traj['C']", 2)
    t_len, n = conf.shape
    if t_len < 1 or n < 1:
        raise ValueError(f"traj['C'] must be (T, N) with T, N >= 1, got {conf.shape}")
    theta = _float_array(traj["threshold"], "traj['threshold']", 1)
    guid = _float_array(traj["guidance"], "traj['guidance']", 2)
    alive = np.asarray(traj["alive"])
    if alive.dtype != np.bool_:
        raise TypeError(f"traj['alive'] must be a bool array, got dtype {alive.dtype}")
    for name, arr, shape in (("threshold", theta, (t_len,)), ("guidance", guid, (t_len, n)),
                             ("alive", alive, (t_len, n))):
        if arr.shape != shape:
            raise ValueError(f"traj[{name!r}] must have shape {shape} to match C {conf.shape}, got {arr.shape}")
    warmup = traj["warmup_steps"]
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ValueError(f"traj['warmup_steps'] must be an int >= 0, got {warmup!r}")
    winner = traj["winner"]
    winner = -1 if winner is None else winner
    if isinstance(winner, np.ndarray) and winner.ndim == 0:
        winner = winner.item()
    if isinstance(winner, bool) or not isinstance(winner, (int, np.integer)) or not -1 <= winner < n:
        raise ValueError(f"traj['winner'] must be an int in [0, {n}) or None / -1, got {winner!r}")
    winner = int(winner)
    _check_common(path, dpi, figsize)

    fig = _figure(figsize)
    ax_c, ax_g = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    steps = np.arange(t_len)
    show_each = n <= 8
    for ax in (ax_c, ax_g):
        if warmup > 0:
            ax.axvspan(-0.5, min(warmup, t_len) - 0.5, color="0.85", alpha=0.6, lw=0,
                       label=f"warm-up ({warmup} steps)" if ax is ax_c else None)
        ax.grid(True, alpha=0.3)
    order = [i for i in range(n) if i != winner] + ([winner] if winner >= 0 else [])
    for k, i in enumerate(order):
        is_winner = i == winner
        color = _WINNER_COLOR if is_winner else _CANDIDATE_COLORS[k % len(_CANDIDATE_COLORS)]
        dead = np.flatnonzero(~alive[:, i])
        end = int(dead[0]) if dead.size else t_len  # first terminated step
        lw, z = (2.8, 5) if is_winner else (1.3, 3)
        if is_winner:
            label = f"winner #{i}"
        elif show_each:
            label = f"#{i}" + (f" pruned@{end}" if end < t_len else "")
        else:
            label = "other candidates" if k == 0 else None
        for ax, ys in ((ax_c, conf[:, i]), (ax_g, guid[:, i])):
            live = np.where(alive[:, i], ys, np.nan)
            ax.plot(steps, live, color=color, lw=lw, zorder=z, label=label if ax is ax_c else None)
            if end < t_len:
                rest = ys.copy()
                rest[:max(end - 1, 0)] = np.nan
                if np.any(np.isfinite(rest[end:])):
                    ax.plot(steps, rest, color="0.7", lw=0.8, ls=":", zorder=2)
                if end > 0 and np.isfinite(ys[end - 1]):
                    ax.plot([end - 1], [ys[end - 1]], marker="x", ms=8, mew=2, color=_PRUNED_COLOR, zorder=6,
                            ls="none")
    if np.any(~alive):
        ax_c.plot([], [], marker="x", ms=8, mew=2, color=_PRUNED_COLOR, ls="none", label="terminated")
    ax_c.plot(steps, theta, color="black", ls="--", lw=1.6, zorder=4, label=r"EMA threshold $\theta_t$")
    ax_c.set_ylabel(r"confidence $C_t$")
    ax_g.set_ylabel(r"guidance scale $w_t$")
    ax_g.set_xlabel("decoding step t (image-token index)")
    ax_c.set_title("token confidence per candidate", fontsize=11)
    ax_g.set_title("guidance scale per candidate", fontsize=11)
    ax_g.set_xlim(-0.5, t_len - 0.5)
    fig.legend(*ax_c.get_legend_handles_labels(), loc="outside right upper", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path, dpi)


def plot_entropy_heatmap(path, entropy, image=None, title: str | None = None, *, units: str = "nats",
                         dpi: float = 120, figsize=None, cmap: str = "magma") -> str:
    """Token-entropy heat map `entropy` `(g, g)` (row-major token grid) beside the decoded
    `image` `(H, W, 3)` uint8 (or float in [-1, 1]; optional), as in ScalingAR's Figure 7.
    `figsize` defaults to (9, 4) with an image and (5, 4) without."""
    ent = _float_array(entropy, "entropy", 2)
    if ent.shape[0] < 1 or ent.shape[1] < 1:
        raise ValueError(f"entropy must be a non-empty (g, g) grid, got {ent.shape}")
    img = None if image is None else images.as_image(image, "image")
    figsize = figsize or ((9.0, 4.0) if img is not None else (5.0, 4.0))
    _check_common(path, dpi, figsize)

    fig = _figure(figsize)
    axes = fig.subplots(1, 2 if img is not None else 1, squeeze=False)[0]
    if img is not None:
        axes[0].imshow(img, interpolation="nearest")
        axes[0].set_title("generated image", fontsize=11)
        axes[0].set_axis_off()
    ax = axes[-1]
    im = ax.imshow(ent, cmap=cmap, interpolation="nearest")
    ax.set_title(f"token entropy ({ent.shape[0]}x{ent.shape[1]} grid)", fontsize=11)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token column")
    ax.set_ylabel("token row")
    fig.colorbar(im, ax=ax, label=f"entropy ({units})", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path, dpi)


# ----------------------------------------------------------------------------- experiment results
def _series(series: Mapping, length: int, what: str) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"series must be a non-empty dict name -> values, got {series!r}")
    out = []
    for name, v in series.items():
        if isinstance(v, tuple) and len(v) == 2 and np.ndim(v[0]) == 1 and np.ndim(v[1]) == 1:
            ys, err = _float_array(v[0], f"series[{name!r}] values", 1), _float_array(v[1], f"series[{name!r}] error", 1)
        else:
            ys, err = _float_array(v, f"series[{name!r}]", 1), None
        for arr in (ys, err):
            if arr is not None and arr.shape != (length,):
                raise ValueError(f"series[{name!r}] has {arr.shape[0]} values but there are {length} {what}")
        out.append((str(name), ys, err))
    return out


def plot_lines(path, xs, series: Mapping[str, object], xlabel: str, ylabel: str, title: str | None = None,
               logx: bool = False, *, dpi: float = 120, figsize=(6.4, 4.4)) -> str:
    """One line per entry of `series`: name -> `ys` `(len(xs),)` or `(ys, yerr)` (error bars).

    E.g. accuracy vs. number of candidates N. `logx` uses a base-2 log x axis (xs must be
    > 0); ticks sit at `xs` and are labelled with their values.
    """
    x = _float_array(xs, "xs", 1)
    if x.size < 1:
        raise ValueError("xs must not be empty")
    if logx and np.any(x <= 0):
        raise ValueError("logx=True needs xs > 0")
    ser = _series(series, x.size, "xs")
    _check_common(path, dpi, figsize)

    fig = _figure(figsize)
    ax = fig.subplots()
    for name, ys, err in ser:
        _line(ax, x, ys, err, name, ms=5, lw=1.8)
    if logx:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xticks(x)
    ax.set_xticklabels([f"{v:g}" for v in x])
    _label_axes(ax, xlabel, ylabel, title, legend_size=9)
    return _save(fig, path, dpi)


def _line(ax, x, y, err, name: str, *, ms: float, lw: float) -> None:
    if err is None:
        ax.plot(x, y, marker="o", ms=ms, lw=lw, label=name)
    else:
        ax.errorbar(x, y, yerr=err, marker="o", ms=ms, lw=lw, capsize=3, label=name)


def _label_axes(ax, xlabel: str, ylabel: str, title: str | None, *, legend_size: float) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=legend_size)
    if title:
        ax.set_title(title)


def plot_xy(path, series: Mapping[str, object], xlabel: str, ylabel: str, title: str | None = None,
            logx: bool = False, *, dpi: float = 120, figsize=(7.2, 4.8)) -> str:
    """One line per entry of `series`, each with its own x values: name -> `(xs, ys)` or
    `(xs, ys, yerr)`, arrays of one length (e.g. accuracy vs tokens per image, one curve per
    strategy). `logx` uses a base-2 log x axis (xs must be > 0)."""
    _check_common(path, dpi, figsize)
    if not series:
        raise ValueError("series must not be empty")
    fig = _figure(figsize)
    ax = fig.subplots()
    for name, v in series.items():
        if not isinstance(v, (tuple, list)) or len(v) not in (2, 3):
            raise ValueError(f"series {name!r} must be (xs, ys) or (xs, ys, yerr)")
        x = _float_array(v[0], f"xs of {name!r}", 1)
        y = _float_array(v[1], f"ys of {name!r}", 1)
        err = None if len(v) == 2 else _float_array(v[2], f"yerr of {name!r}", 1)
        if y.shape != x.shape or (err is not None and err.shape != x.shape):
            raise ValueError(f"series {name!r}: xs, ys (and yerr) must have one length")
        if logx and np.any(x <= 0):
            raise ValueError("logx=True needs xs > 0")
        _line(ax, x, y, err, name, ms=4, lw=1.6)
    if logx:
        ax.set_xscale("log", base=2)
    _label_axes(ax, xlabel, ylabel, title, legend_size=8)
    return _save(fig, path, dpi)


def plot_bars(path, groups: Sequence[str], series: Mapping[str, object], ylabel: str,
              title: str | None = None, yerr: Mapping[str, object] | None = None, *,
              value_labels: bool = False, dpi: float = 120, figsize=None) -> str:
    """Grouped bar chart: one group per entry of `groups` (e.g. GenEval-style tags), one bar per
    entry of `series` (name -> values `(len(groups),)`); `yerr` optionally maps series names
    to error bars of the same length. `value_labels` writes each bar's value above it."""
    groups = [str(g) for g in groups]
    if not groups:
        raise ValueError("groups must not be empty")
    ser = _series(series, len(groups), "groups")
    errs = {}
    if yerr is not None:
        unknown = set(yerr) - {name for name, _, _ in ser}
        if unknown:
            raise KeyError(f"yerr has entries for unknown series {sorted(unknown)}")
        errs = {name: e for name, e, _ in _series(yerr, len(groups), "groups")}
    figsize = figsize or (max(6.4, 1.0 + 0.9 * len(groups) * max(1, len(ser)) ** 0.5), 4.4)
    _check_common(path, dpi, figsize)

    fig = _figure(figsize)
    ax = fig.subplots()
    pos = np.arange(len(groups))
    width = 0.8 / len(ser)
    for k, (name, ys, err) in enumerate(ser):
        e = errs.get(name, err)
        bars = ax.bar(pos + (k - (len(ser) - 1) / 2) * width, ys, width, yerr=e, capsize=3 if e is not None else 0,
                      label=name)
        if value_labels:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(pos)
    ax.set_xticklabels(groups, rotation=30 if max(len(g) for g in groups) > 8 else 0, ha="right"
                       if max(len(g) for g in groups) > 8 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if len(ser) > 1 or ser[0][0]:
        ax.legend(fontsize=9)
    if title:
        ax.set_title(title)
    return _save(fig, path, dpi)
