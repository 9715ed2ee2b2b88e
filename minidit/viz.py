"""Showing what the models do: labelled sample grids, particle animations and sliders.

A grid lays samples out with light-grey separators (visible between dark and bright samples alike) and labels its
rows and columns (class name, CFG scale, step); each sample is enlarged by an integer factor with nearest-neighbour
repetition, so a 16-pixel sample covers at least 64 screen pixels without being blurred. ``save_grid`` is the one
grid helper of the library. The animations show particles moving along an interpolant's path
``x_t = alpha_t x0 + sigma_t eps`` (SiT, arXiv 2401.08740, Sec. 2.2) or along an ODE or SDE sampler's trajectory
(Sec. 2.4); they are GIFs (frames drawn by matplotlib with blitting, written by Pillow) returned as
``IPython.display.Image``, so executed notebooks and the HTML book contain them as ``image/gif``. ``slider`` is an ipywidgets slider in JupyterLab and a
small-multiples figure in the book and CI.
``animate_clips`` plays frames ``(N, H, W, T, C)`` (videos, multi-view turns) as one GIF.
Used by ``minidit.train`` (training sample grids), ``python -m minidit sample``, ``minidit.demo`` and notebooks 01-04
and 09.

Example:
    >>> fig = image_grid(samples, nrow=7, row_labels=SHAPES, col_labels=list(COLOURS), title="CFG 3")  # (35, 3, 16, 16)
    >>> save_grid(samples, "runs/demo/grid.png", nrow=7)
    >>> animate_particles_2d({"ODE": (out.times, out.trajectory)}, path="runs/flow.gif")  # last line of a cell
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from minidit.runs import quick_mode

GAP_COLOUR = (200, 200, 200)  # light grey (8-bit RGB): distinct from black backgrounds and from white objects
MAX_FRAMES = 40
HOLD_SECONDS = 1.0  # the last frame of an animation stays this long before it loops
GIF_COLOURS = 64  # palette size of an animation frame: smaller files, no visible loss on these plots


def upscale_factor(height: int, width: int, min_px: int) -> int:
    """Smallest integer ``k >= 1`` with ``k * min(height, width) >= min_px``."""
    return max(1, math.ceil(min_px / min(height, width)))


def grid_pixels(
    images: Tensor,
    nrow: int | None = None,
    min_px: int = 64,
    gap: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """Lay ``images`` out as one RGB array: ``nrow`` samples per row, each enlarged ``k`` times, grey gaps between.

    Values are clipped to ``value_range`` and mapped to 0..255; each sample pixel becomes a ``k x k`` block with
    ``k = upscale_factor(H, W, min_px)``; a ``gap``-pixel light-grey band surrounds every sample; cells after the
    last sample stay grey.

    Args:
        images: ``(N, C, H, W)`` with ``C`` 1 (grey) or 3 (RGB), values in ``value_range``.
        nrow: samples per row (as in torchvision's ``make_grid``); ``None`` gives ``ceil(sqrt(N))``.
        min_px: the smallest side of a sample on screen, in pixels.
        gap: separator width in screen pixels, ``>= 1``.
        value_range: ``(low, high)`` of the input: ``(-1, 1)`` for minidit's models and data, ``(0, 1)`` for images.
    Returns:
        ``(rows * (k H + gap) + gap, nrow * (k W + gap) + gap, 3)`` uint8 array, ``rows = ceil(N / nrow)``.
    """
    n, channels, height, width = _check_images(images)
    nrow = _check_nrow(nrow, n)
    if not isinstance(gap, int) or gap < 1:
        raise ValueError(f"gap must be a positive number of pixels, got {gap!r}; separators keep samples apart")
    if min_px < 1:
        raise ValueError(f"min_px must be a positive number of pixels, got {min_px!r}")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    k = upscale_factor(height, width, min_px)
    x = ((images.detach().float().cpu().clamp(low, high) - low) * (255 / (high - low))).round().to(torch.uint8)
    x = x.expand(n, 3, height, width)
    x = x.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3).permute(0, 2, 3, 1).numpy()  # (N, kH, kW, 3)
    rows = math.ceil(n / nrow)
    cell_h, cell_w = k * height + gap, k * width + gap
    out = np.empty((rows * cell_h + gap, nrow * cell_w + gap, 3), dtype=np.uint8)
    out[:] = GAP_COLOUR
    for i in range(n):
        top, left = gap + (i // nrow) * cell_h, gap + (i % nrow) * cell_w
        out[top:top + k * height, left:left + k * width] = x[i]
    return out


def image_grid(
    images: Tensor,
    nrow: int | None = None,
    row_labels: Sequence[Any] | None = None,
    col_labels: Sequence[Any] | None = None,
    title: str | None = None,
    min_px: int = 64,
    *,
    xlabel: str | None = None,
    ylabel: str | None = None,
    gap: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
    ax: Axes | None = None,
) -> Figure:
    """Draw ``images`` as a labelled grid (see ``grid_pixels``) on a new figure, or on ``ax``.

    A new figure is sized so that one array pixel is one figure pixel at ``matplotlib.rcParams["figure.dpi"]``,
    with just enough margin for the labels and the title.

    Args:
        images: ``(N, C, H, W)``, ``C`` in {1, 3}, values in ``value_range`` (default [-1, 1]).
        nrow: samples per row; ``None`` gives ``ceil(sqrt(N))``.
        row_labels: one label per row (e.g. class names), written left of the rows.
        col_labels: one label per column (e.g. CFG scales), written above the columns.
        title: figure title.
        min_px: the smallest side of a sample on screen, in pixels (integer nearest-neighbour upscaling).
        xlabel, ylabel: what the columns and the rows vary (e.g. ``"CFG scale"``, ``"class"``).
        gap: separator width in screen pixels.
        value_range: ``(low, high)`` of the input values.
        ax: draw on these axes instead of a new figure.
    Returns:
        The figure (``ax.figure`` when ``ax`` is given).
    """
    n = _check_images(images)[0]
    nrow = _check_nrow(nrow, n)
    rows = math.ceil(n / nrow)
    pixels = grid_pixels(images, nrow, min_px, gap, value_range)
    new_figure = ax is None
    if ax is None:
        dpi = plt.rcParams["figure.dpi"]
        fig = plt.figure(figsize=(pixels.shape[1] / dpi, pixels.shape[0] / dpi), dpi=dpi)
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(pixels, interpolation="nearest")
    height, width = images.shape[-2:]
    k = upscale_factor(height, width, min_px)
    ax.set_yticks(_centres(rows, k * height, gap), _labels("row_labels", row_labels, rows))
    ax.set_xticks(_centres(nrow, k * width, gap), _labels("col_labels", col_labels, nrow))
    ax.tick_params(length=0, top=col_labels is not None, labeltop=True, bottom=False, labelbottom=False)
    ax.xaxis.set_label_position("top")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    if new_figure:
        _fit_around(ax, pixels.shape[1], pixels.shape[0])
    return ax.figure


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, **kwargs: Any) -> Path:
    """Write ``image_grid(images, nrow, **kwargs)`` as a PNG at one array pixel per image pixel; returns the path.

    Args:
        images: ``(N, C, H, W)`` in [-1, 1] unless ``value_range`` says otherwise.
        path: the PNG file; its folder is created.
        nrow, **kwargs: as for ``image_grid`` (labels, title, ``min_px``, ...).
    """
    fig = image_grid(images, nrow, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, facecolor="white")
    plt.close(fig)
    return path


def animate_particles_1d(
    paths: Mapping[str, tuple[Tensor, Tensor]],
    colour_by: Tensor | None = None,
    colour_label: str = "",
    n_lines: int = 60,
    path: str | Path | None = None,
    max_frames: int = MAX_FRAMES,
    fps: int = 10,
) -> Any:
    """Animate 1-D particles along their paths, one panel per entry: time across, position up, trails behind.

    Each frame shows every particle at the frame's time and the path so far of ``n_lines`` of them, so the fan
    of trails builds up the law of ``x_t``. Panels advance through the same fraction of their own time grid.

    Args:
        paths: ``{name: (times (K,), positions (K, N) or (K, N, 1))}``, e.g. ``x_t = alpha_t x0 + sigma_t eps``
            on a grid of ``t``, or ``(out.times, out.trajectory)`` of ``minidit.samplers.sample_ode``.
        colour_by: ``(N,)`` values that colour the particles (e.g. their data point ``x0``), shown by a colourbar.
        colour_label: the colourbar's label.
        n_lines: how many particles draw their trail.
        path: also write the GIF there.
        max_frames: at most this many distinct frames (evenly spaced along each grid, both ends included).
        fps: frames per second.
    Returns:
        ``IPython.display.Image`` of the GIF (its bytes are ``.data``); make it the last line of a notebook cell.
    """
    panels = {}
    for name, (times, states) in _check_paths(paths).items():
        x = _positions(name, states, 1)  # (K, N, 1)
        panels[name] = (times, torch.cat([times[:, None, None].expand_as(x), x], dim=-1))  # points (t, x)
    x_values = torch.cat([points[..., 1].flatten() for _, points in panels.values()])
    low, high = x_values.min().item(), x_values.max().item()
    margin = 0.05 * (high - low) + 1e-6
    t_values = torch.cat([times for times, _ in panels.values()])
    limits = ((min(t_values.min().item(), 0.0), max(t_values.max().item(), 1.0)), (low - margin, high + margin))
    return _animate_points(panels, colour_by, colour_label, n_lines, limits, ("t (0 = data, 1 = noise)", "x"),
                           (3.0, 2.4), path, max_frames, fps)


def animate_particles_2d(
    paths: Mapping[str, tuple[Tensor, Tensor]],
    colour_by: Tensor | None = None,
    colour_label: str = "",
    n_trails: int = 0,
    extent: float | None = None,
    path: str | Path | None = None,
    max_frames: int = MAX_FRAMES,
    fps: int = 10,
) -> Any:
    """Animate a cloud of 2-D particles along their paths, one panel per entry, side by side.

    Args:
        paths: ``{name: (times (K,), positions (K, N, 2))}``, e.g. an interpolant's ``x_t`` on a grid of ``t``
            or ``(out.times, out.trajectory)`` of a sampler.
        colour_by: ``(N,)`` values that colour the particles (e.g. the angle of their data point), with a colourbar.
        colour_label: the colourbar's label.
        n_trails: how many particles also draw their path so far.
        extent: the axes span ``[-extent, extent]^2``; ``None`` fits every position.
        path: also write the GIF there.
        max_frames: at most this many distinct frames (evenly spaced along each grid, both ends included).
        fps: frames per second.
    Returns:
        ``IPython.display.Image`` of the GIF (its bytes are ``.data``); make it the last line of a notebook cell.
    """
    panels = {name: (times, _positions(name, states, 2)) for name, (times, states) in _check_paths(paths).items()}
    if extent is None:
        extent = 1.05 * max(states.abs().max().item() for _, states in panels.values())
    return _animate_points(panels, colour_by, colour_label, n_trails, ((-extent, extent), (-extent, extent)),
                           ("$x_1$", "$x_2$"), (3.0, 3.0), path, max_frames, fps)


def animate_trajectories(
    paths: Mapping[str, tuple[Tensor, Tensor]],
    colour_by: Tensor | None = None,
    colour_label: str = "",
    n_trails: int = 24,
    extent: float | None = None,
    path: str | Path | None = None,
    max_frames: int = MAX_FRAMES,
    fps: int = 10,
) -> Any:
    """Samplers side by side (e.g. ODE against SDE on the 8 Gaussians): the cloud plus ``n_trails`` whole paths.

    The same as ``animate_particles_2d`` with trails on: a probability-flow ODE draws smooth paths that never
    cross, an SDE jagged ones, while both clouds pass through the same marginals.

    Args:
        paths: ``{sampler name: (out.times (K,), out.trajectory (K, N, 2))}`` of ``sample_ode`` / ``sample_sde``
            with ``return_trajectory=True``.
        colour_by, colour_label, n_trails, extent, path, max_frames, fps: as for ``animate_particles_2d``.
    Returns:
        ``IPython.display.Image`` of the GIF.
    """
    return animate_particles_2d(paths, colour_by, colour_label, n_trails, extent, path, max_frames, fps)


def animate_denoising(
    times: Tensor,
    images: Tensor,
    nrow: int | None = None,
    path: str | Path | None = None,
    max_frames: int = MAX_FRAMES,
    fps: int = 8,
    **grid_kwargs: Any,
) -> Any:
    """Animate samples from noise to data: frame ``k`` is the grid of ``images[k]`` with ``image_grid``'s layout.

    Args:
        times: ``(K,)`` times of the states, e.g. ``out.times`` of ``sample_ode(..., return_trajectory=True)``.
        images: ``(K, N, C, H, W)`` states (``out.trajectory``), values in ``value_range`` (default [-1, 1];
            the noise outside it is clipped for display).
        nrow: samples per row.
        path: also write the GIF there.
        max_frames: at most this many distinct frames (evenly spaced, both ends included).
        fps: frames per second.
        **grid_kwargs: ``row_labels``, ``col_labels``, ``title``, ``xlabel``, ``ylabel``, ``min_px``, ``gap``,
            ``value_range``; the time of the frame is written below the grid.
    Returns:
        ``IPython.display.Image`` of the GIF.
    """
    if images.ndim != 5:
        raise ValueError(f"images must have shape (K, N, C, H, W): K states of N samples, got {tuple(images.shape)}")
    times = _check_times("images", times, images.shape[0])
    return _animate_grids(images, [f"t = {t:.2f}" for t in times.tolist()], nrow, path, max_frames, fps, grid_kwargs)


def animate_clips(
    clips: Tensor,
    nrow: int | None = None,
    path: str | Path | None = None,
    fps: int = 4,
    **grid_kwargs: Any,
) -> Any:
    """Play clips (videos, multi-view turns) side by side: frame ``k`` is the grid of every clip's frame ``k``.

    Args:
        clips: ``(N, H, W, T, C)`` frames (``minidit.frames``' layout), values in ``value_range`` (default [-1, 1]).
        nrow: clips per row.
        path: also write the GIF there.
        fps: frames per second.
        **grid_kwargs: as ``animate_denoising``; the frame number is written below the grid.
    Returns:
        ``IPython.display.Image`` of the GIF.
    """
    if clips.ndim != 5:
        raise ValueError(f"clips must have shape (N, H, W, T, C), got {tuple(clips.shape)}")
    frames = clips.shape[3]
    states = clips.permute(3, 0, 4, 1, 2)  # (T, N, C, H, W)
    return _animate_grids(states, [f"frame {k + 1} / {frames}" for k in range(frames)], nrow, path, frames, fps,
                          grid_kwargs)


def _animate_grids(states: Tensor, captions: list[str], nrow: int | None, path: str | Path | None, max_frames: int,
                   fps: int, grid_kwargs: dict[str, Any]) -> Any:
    """Animate grids of ``states`` ``(K, N, C, H, W)`` with ``captions[k]`` written below grid ``k``."""
    pixels = [grid_pixels(frame, nrow, grid_kwargs.get("min_px", 64), grid_kwargs.get("gap", 2),
                          grid_kwargs.get("value_range", (-1.0, 1.0))) for frame in states]
    height, width = pixels[0].shape[:2]
    fig = Figure(figsize=(width / 72, height / 72), dpi=72)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    image_grid(states[0], nrow, ax=ax, **grid_kwargs)
    clock = ax.text(0.5, -0.02, captions[-1], transform=ax.transAxes, ha="center", va="top")
    _fit_around(ax, width, height)
    shown = ax.images[0]

    def draw(index: list[int]) -> None:
        shown.set_data(pixels[index[0]])
        clock.set_text(captions[index[0]])

    return _animate(fig, draw, [shown, clock], [len(captions)], path, max_frames, fps)


def slider(
    draw: Callable[[Axes, float], None],
    values: Sequence[float],
    name: str,
    static_values: Sequence[float] | None = None,
    path: str | Path | None = None,
    panel_size: tuple[float, float] = (3.2, 3.2),
) -> None:
    """Show ``draw(ax, value)`` for ``value`` in ``values``: a slider in JupyterLab, small multiples elsewhere.

    The slider (``ipywidgets``, imported lazily) redraws one figure per chosen value. The static version draws one
    panel per value of ``static_values`` (default: up to four of ``values``, both ends included), each titled
    ``"{name} = {value}"``. It is used when ``MINIDIT_STATIC=1`` (the HTML book) or ``MINIDIT_QUICK=1`` (CI), outside
    a Jupyter kernel, or, with a warning, when ipywidgets is not installed. The widget or figure is displayed here.

    Args:
        draw: ``draw(ax, value)`` draws the picture for one value on ``ax``, with axis labels.
        values: the slider's positions, e.g. CFG scales or times ``t``.
        name: what the value is (``"CFG scale"``, ``"t"``).
        static_values: the values of the static panels.
        path: save the static figure there as a PNG (the slider has no file).
        panel_size: width and height of one panel in inches.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("slider needs at least one value")
    if static_values is None:
        static_values = [values[round(i)] for i in np.linspace(0, len(values) - 1, min(4, len(values)))]
    if _interactive():
        widgets = importlib.import_module("ipywidgets")
        display = importlib.import_module("IPython.display").display

        def show(value: float) -> None:
            fig, ax = plt.subplots(figsize=panel_size)
            draw(ax, value)
            ax.set_title(f"{name} = {value:g}")
            plt.show()

        options = [(f"{v:g}", v) for v in values]
        display(widgets.interactive(show, value=widgets.SelectionSlider(options=options, description=name,
                                                                         continuous_update=False)))
        return
    fig, axes = plt.subplots(1, len(static_values), figsize=(panel_size[0] * len(static_values), panel_size[1]),
                             squeeze=False)
    for ax, value in zip(axes[0], static_values):
        draw(ax, float(value))
        ax.set_title(f"{name} = {float(value):g}")
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.show()


def static_mode() -> bool:
    """True when figures must not be interactive: ``MINIDIT_STATIC=1`` (the HTML book) or ``MINIDIT_QUICK=1``."""
    return os.environ.get("MINIDIT_STATIC", "0").strip().lower() in ("1", "true", "yes") or quick_mode()


def _interactive() -> bool:
    """Whether ``slider`` shows a widget: not in static mode, inside a Jupyter kernel, with ipywidgets installed."""
    if static_mode() or importlib.util.find_spec("IPython") is None:
        return False
    shell = importlib.import_module("IPython").get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    if importlib.util.find_spec("ipywidgets") is None:
        warnings.warn("ipywidgets is not installed, so the slider is shown as a static figure; "
                      "`pip install ipywidgets` for the interactive version", stacklevel=3)
        return False
    return True


def _fit_around(ax: Axes, width: int, height: int, pad: int = 4) -> None:
    """Resize ``ax``'s figure so that ``ax`` spans ``width x height`` figure pixels and its labels fit around it."""
    fig = ax.figure
    dpi = fig.dpi
    fig.set_size_inches(width / dpi, height / dpi)
    ax.set_position((0.0, 0.0, 1.0, 1.0))
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches; beyond the figure where labels stick out
    left, bottom = math.ceil(max(0.0, -box.x0) * dpi) + pad, math.ceil(max(0.0, -box.y0) * dpi) + pad
    right = math.ceil(max(0.0, box.x1 * dpi - width)) + pad
    top = math.ceil(max(0.0, box.y1 * dpi - height)) + pad
    total_w, total_h = width + left + right, height + bottom + top
    fig.set_size_inches(total_w / dpi, total_h / dpi)
    ax.set_position((left / total_w, bottom / total_h, width / total_w, height / total_h))


def _check_images(images: Tensor) -> tuple[int, int, int, int]:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, C, H, W) with N >= 1 and C = 1 (grey) or 3 (RGB), "
                         f"got {shape}; add a batch dimension with images[None] or pick channels with images[:, :3]")
    n, c, h, w = images.shape
    return n, c, h, w


def _check_nrow(nrow: int | None, n: int) -> int:
    if nrow is None:
        return math.ceil(math.sqrt(n))
    if not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow (samples per row) must be a positive integer, got {nrow!r}")
    return nrow


def _centres(count: int, size: int, gap: int) -> list[float]:
    """Array coordinates of the centres of ``count`` cells of ``size`` pixels after a ``gap``-pixel band each."""
    return [gap + i * (size + gap) + (size - 1) / 2 for i in range(count)]


def _labels(kind: str, labels: Sequence[Any] | None, count: int) -> list[str]:
    if labels is None:
        return [""] * count
    labels = [f"{label:g}" if isinstance(label, float) else str(label) for label in labels]
    if len(labels) != count:
        raise ValueError(f"{kind} has {len(labels)} entries but the grid has {count}; "
                         "give one label per row (row_labels) or per column (col_labels = nrow labels)")
    return labels


def _check_times(name: str, times: Tensor, length: int) -> Tensor:
    times = torch.as_tensor(times).detach().float().cpu()
    if times.ndim != 1 or len(times) != length:
        raise ValueError(f"{name}: times must have shape (K,) with K = {length} states, got {tuple(times.shape)}")
    return times


def _check_paths(paths: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    if not isinstance(paths, Mapping) or not paths:
        raise ValueError("paths must be a non-empty dict {name: (times (K,), positions (K, N, ...))}")
    checked = {}
    for name, entry in paths.items():
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"paths[{name!r}] must be a pair (times (K,), positions (K, N, ...)), "
                             "e.g. (out.times, out.trajectory) of a sampler called with return_trajectory=True")
        times, states = entry
        if states is None:
            raise ValueError(f"paths[{name!r}] has no positions; call the sampler with return_trajectory=True")
        states = states.detach().float().cpu()
        checked[name] = (_check_times(f"paths[{name!r}]", times, states.shape[0]), states)
    return checked


def _positions(name: str, states: Tensor, dim: int) -> Tensor:
    """``states`` as ``(K, N, dim)``; a 1-D ``(K, N)`` gains its last axis."""
    if dim == 1 and states.ndim == 2:
        states = states[..., None]
    if states.ndim != 3 or states.shape[-1] != dim:
        want = "(K, N) or (K, N, 1)" if dim == 1 else "(K, N, 2)"
        raise ValueError(f"paths[{name!r}]: positions must have shape {want}, got {tuple(states.shape)}")
    return states


def _animate_points(panels: dict[str, tuple[Tensor, Tensor]], colour_by: Tensor | None, colour_label: str,
                    n_trails: int, limits: tuple[tuple[float, float], tuple[float, float]], labels: tuple[str, str],
                    panel_size: tuple[float, float], path: str | Path | None, max_frames: int, fps: int) -> Any:
    """Animate ``{name: (times (K,), points (K, N, 2))}`` as one scatter panel per name, ``n_trails`` with trails."""
    counts = {name: points.shape[1] for name, (_, points) in panels.items()}
    n = next(iter(counts.values()))
    if any(count != n for count in counts.values()):
        raise ValueError(f"every path must carry the same particles; particle counts are {counts}")
    if colour_by is not None and tuple(colour_by.shape) != (n,):
        raise ValueError(f"colour_by must have shape (N,) = ({n},), one value per particle, got {tuple(colour_by.shape)}")
    fig = Figure(figsize=(panel_size[0] * len(panels) + 0.8, panel_size[1]), dpi=72, layout="constrained")
    FigureCanvasAgg(fig)  # outside pyplot, so a notebook shows the GIF and no stray last frame
    axes = list(np.atleast_1d(fig.subplots(1, len(panels), sharey=True)))
    if colour_by is None:
        colour = {"color": "C0"}
    else:
        values = colour_by.detach().float().cpu().numpy()
        colour = {"c": values, "cmap": "viridis", "norm": Normalize(values.min(), values.max())}
    trails, dots = [], []
    shown = torch.arange(0, n, max(1, n // max(n_trails, 1)))[:n_trails]
    for ax, (_, points) in zip(axes, panels.values()):
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        trail = LineCollection([], linewidths=0.6, alpha=0.6, color="0.3")
        ax.add_collection(trail)
        trails.append(trail)
        dots.append(ax.scatter(*points[0].T.numpy(), s=3, linewidths=0, **colour))
    if colour_by is not None:
        fig.colorbar(dots[0], ax=axes, label=colour_label, fraction=0.04, pad=0.02)

    def draw(index: list[int]) -> None:
        for ax, (name, (times, points)), trail, dot, i in zip(axes, panels.items(), trails, dots, index):
            trail.set_segments([points[: i + 1, j].numpy() for j in shown.tolist()])
            dot.set_offsets(points[i].numpy())
            ax.set_title(f"{name}: t = {times[i].item():.2f}", fontsize=9)

    animated = [*trails, *dots, *(ax.title for ax in axes)]
    return _animate(fig, draw, animated, [len(times) for times, _ in panels.values()], path, max_frames, fps)


def _animate(fig: Figure, draw: Callable[[list[int]], None], animated: list[Artist], lengths: list[int],
             path: str | Path | None, max_frames: int, fps: int) -> Any:
    """Render ``draw(indices)`` at evenly spaced indices of each panel's grid into a GIF; an ``IPython.display.Image``.

    The figure is laid out and drawn once; each frame redraws only the ``animated`` artists over that background
    (matplotlib's blitting), and Pillow writes the frames with a palette of ``GIF_COLOURS`` colours.
    """
    if importlib.util.find_spec("IPython") is None:
        raise ImportError("the animations are returned as IPython.display.Image; install IPython (pip install ipython)")
    if not isinstance(max_frames, int) or max_frames < 2:
        raise ValueError(f"max_frames must be an integer >= 2 (first and last state), got {max_frames!r}")
    if fps < 1:
        raise ValueError(f"fps must be at least 1, got {fps!r}")
    frames = min(max_frames, max(lengths))
    index = [[round(i) for i in np.linspace(0, length - 1, frames)] for length in lengths]
    draw([column[-1] for column in index])  # the layout sees the final titles
    for artist in animated:
        artist.set_animated(True)
    fig.canvas.draw()
    fig.set_layout_engine("none")
    background = fig.canvas.copy_from_bbox(fig.bbox)
    images = []
    for f in range(frames):
        draw([column[f] for column in index])
        fig.canvas.restore_region(background)
        for artist in animated:
            fig.draw_artist(artist)
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        images.append(PIL.Image.fromarray(rgb).quantize(GIF_COLOURS))
    durations = [round(1000 / fps)] * frames
    durations[-1] += round(1000 * HOLD_SECONDS)  # hold the final state before the loop restarts
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(buffer.getvalue())
    return importlib.import_module("IPython.display").Image(data=buffer.getvalue(), format="gif")
