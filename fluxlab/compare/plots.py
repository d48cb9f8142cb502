"""Figures (matplotlib, no pyplot state): error heatmaps per head and token, and image grids with differences."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..util import atomic_path


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib (or fluxlab[compare])") from exc
    return Figure(figsize=(width, height), layout="constrained")


def _rows_with_maps(source, backends=None):
    """The rows to draw: for a report, each backend's worst row that has an error map."""
    if hasattr(source, "error_map"):  # one ComparisonRow
        return [source]
    if not hasattr(source, "rows_for"):  # a list of rows
        return [r for r in source if r.error_map is not None]
    mapped = ([r for r in source.rows_for(name) if r.error_map is not None] for name in backends or source.verdicts)
    return [max(rows, key=lambda r: 0 if math.isnan(r.rel_l2_ratio) else r.rel_l2_ratio) for rows in mapped if rows]


def plot_error_maps(source, backends=None, *, path=None, max_rows: int = 12):
    """Where each backend's error sits: relative L2 per (head, query token), per head, and per token.

    ``source``: a ComparisonReport (each backend's worst input is drawn), a row, or a list of rows.
    Returns a matplotlib Figure; with ``path`` it is also saved there (PNG/SVG/PDF by extension).
    """
    rows = _rows_with_maps(source, backends)[:max_rows]
    if not rows:
        raise ValueError("nothing to plot: no row has an error map (did every backend fail or get skipped, or was "
                         "compare_attention run with error_maps=False?)")
    fig = _figure(13, 2.3 * len(rows) + 0.6)
    grid = fig.add_gridspec(len(rows), 3, width_ratios=(5, 1.4, 3))
    for i, row in enumerate(rows):
        emap = row.error_map
        floor = max(float(np.nanmin(emap.head_token[emap.head_token > 0], initial=1e-12)), 1e-12)
        heat = np.log10(np.clip(emap.head_token, floor, None))
        ax = fig.add_subplot(grid[i, 0])
        image = ax.imshow(heat, aspect="auto", interpolation="nearest", cmap="magma",
                          extent=(0, emap.head_token.shape[1] * emap.token_bin, emap.head_token.shape[0] - 0.5, -0.5))
        fig.colorbar(image, ax=ax, label="log10 rel. error", pad=0.01)
        ax.set_ylabel("head")
        ax.set_title(f"{row.backend} [{row.verdict}] - {row.input} {row.dtype}", fontsize=9, loc="left")
        if emap.text_tokens:
            ax.axvline(emap.text_tokens, color="cyan", lw=0.8, ls="--")
        if i == len(rows) - 1:
            ax.set_xlabel(f"query token (bins of {emap.token_bin})" if emap.token_bin > 1 else "query token")
        bars = fig.add_subplot(grid[i, 1])
        heads = np.arange(len(emap.per_head))
        bars.barh(heads, emap.per_head, color=["crimson" if h == emap.worst_head else "grey" for h in heads])
        finite = emap.per_head[np.isfinite(emap.per_head) & (emap.per_head > 0)]
        if finite.size and finite.max() / finite.min() > 20:
            from matplotlib.ticker import NullFormatter

            bars.set_xscale("log")
            bars.xaxis.set_minor_formatter(NullFormatter())
        else:
            bars.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        bars.invert_yaxis()
        bars.set_title(f"per head (worst {emap.worst_head})", fontsize=8)
        line = fig.add_subplot(grid[i, 2])
        line.semilogy(emap.per_token, lw=0.6, color="black")
        line.axvline(emap.worst_token, color="crimson", lw=0.8)
        if emap.text_tokens:
            line.axvspan(0, emap.text_tokens, color="cyan", alpha=0.15, label="text")
        line.set_title(f"per token (worst: {emap.describe_token(emap.worst_token)})", fontsize=8)
    if path is not None:
        save_figure(fig, path, dpi=110)
    return fig


def plot_image_comparison(comparison, *, path=None):
    """Top: each backend's image; middle: |difference| to the reference image; bottom: latent drift per step."""
    labels = [r.backend for r in comparison.rows if r.backend in comparison.images]
    if not labels:
        raise ValueError("no image was generated (every backend failed); see comparison.rows[*].error")
    ref = comparison.images[comparison.reference]
    n = len(labels)
    fig = _figure(max(6.0, 2.2 * n), 7.2)
    grid = fig.add_gridspec(3, n, height_ratios=(1, 1, 0.9))
    diffs = {label: np.abs(comparison.images[label].astype(np.float64) - ref).mean(axis=-1) for label in labels}
    vmax = max(max(float(d.max()) for d in diffs.values()), 1e-6)
    metrics = {r.backend: r for r in comparison.rows}
    shown = None
    for j, label in enumerate(labels):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(np.clip(comparison.images[label], 0, 1))
        ax.set_axis_off()
        row = metrics[label]
        ax.set_title(f"{label}\nPSNR {row.psnr:.1f} dB, SSIM {row.ssim:.4f}" if label != comparison.reference
                     else f"{label}\n(reference)", fontsize=8)
        dx = fig.add_subplot(grid[1, j])
        shown = dx.imshow(diffs[label], cmap="inferno", vmin=0, vmax=vmax)
        dx.set_axis_off()
        dx.set_title(f"|diff| max {diffs[label].max():.3g}", fontsize=8)
    fig.colorbar(shown, ax=[fig.axes[-1]], shrink=0.8, label="|pixel difference|")
    plot_latent_drift(fig.add_subplot(grid[2, :]), comparison)
    if path is not None:
        save_figure(fig, path, dpi=110)
    return fig


def plot_latent_drift(ax, comparison) -> None:
    """On ``ax``: each backend's latent drift per denoising step against the reference backend's, log scale."""
    from matplotlib.ticker import MaxNLocator

    for row in comparison.rows:
        if row.latent_drift and row.backend != comparison.reference:
            ax.plot(range(1, len(row.latent_drift) + 1), np.maximum(row.latent_drift, 1e-12), marker="o",
                    label=row.backend)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step")
    ax.set_ylabel(f"latent rel. L2 vs {comparison.reference}\n(identical drawn at 1e-12)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no other backend to compare", ha="center", va="center", transform=ax.transAxes)


def figure_png(fig, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig, path, **savefig_kwargs) -> None:
    """``fig.savefig`` through ``fluxlab.util.atomic_path`` (format from the file name's suffix, PNG by default)."""
    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format=suffix, **savefig_kwargs)
