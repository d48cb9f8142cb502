"""Procedural "coloured shapes" scenes with captions, deterministic from a seed: the embedded model's training data.

A scene is one or two shapes (circle, square, triangle), each of one palette colour, in cells of a 3x3 grid, on a
background of another palette colour; its caption is written from the same parameters ("a red circle at the top left
on a blue background"). Held out from training are whole (colour, shape, position) triples, e.g. "green square at
the center": every colour, shape and position -- and every pair of them -- still occurs in training, but a held-out
caption asks for a combination the model never saw. ``cell_colour`` is the pixel test: which palette colour the
middle of a grid cell shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

IMAGE_SIZE = 64

# Palette, RGB 0..255. Distinct enough that the mean colour of a patch maps back to one name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# 3x3 grid, row-major; index = 3 * row + column.
POSITIONS: tuple[str, ...] = ("top left", "top center", "top right",
                              "middle left", "center", "middle right",
                              "bottom left", "bottom center", "bottom right")

# Geometry in pixels of a 64x64 image.
CELL = IMAGE_SIZE / 3
SIZE_RANGE = (7.5, 9.0)  # shape "radius": half the side of a square
JITTER = 1.0  # +- offset of a shape's centre from its cell centre
PROBE_HALF = 3  # the pixel test averages the (2 * PROBE_HALF + 1)^2 pixels around a cell centre
SUPERSAMPLE = 2  # render at 2x and average, for anti-aliased edges


def is_heldout(colour: int, shape: int, position: int) -> bool:
    """Whether the (colour, shape, position) triple is reserved for evaluation (about 1 in 5 triples).

    For a fixed (colour, position) the three shapes give three consecutive residues mod 5, so at most one of them is
    held out: every pair of attributes stays in training.
    """
    return (colour + shape + position) % 5 == 0


HELDOUT_TRIPLES: tuple[tuple[int, int, int], ...] = tuple(
    (c, s, p) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for p in range(len(POSITIONS))
    if is_heldout(c, s, p))


@dataclasses.dataclass(frozen=True)
class Shape:
    colour: int  # index into COLOUR_NAMES
    shape: int  # index into SHAPES
    position: int  # index into POSITIONS
    dx: float = 0.0  # offset from the cell centre, pixels
    dy: float = 0.0
    size: float = 8.0  # "radius", pixels

    @property
    def heldout(self) -> bool:
        return is_heldout(self.colour, self.shape, self.position)

    def phrase(self) -> str:
        colour = COLOUR_NAMES[self.colour]
        article = "an" if colour[0] in "aeiou" else "a"
        return f"{article} {colour} {SHAPES[self.shape]} at the {POSITIONS[self.position]}"


@dataclasses.dataclass(frozen=True)
class Scene:
    background: int  # index into COLOUR_NAMES
    shapes: tuple[Shape, ...]

    @property
    def caption(self) -> str:
        colour = COLOUR_NAMES[self.background]
        article = "an" if colour[0] in "aeiou" else "a"
        return " and ".join(s.phrase() for s in self.shapes) + f" on {article} {colour} background"


def caption(scene: Scene) -> str:
    """The caption written from a scene's parameters."""
    return scene.caption


def sample_scenes(n: int, seed: int, split: str = "train", two_shape_fraction: float = 0.5) -> list[Scene]:
    """``n`` scenes drawn deterministically from ``seed``.

    ``split="train"``: no shape uses a held-out triple. ``split="heldout"``: every shape of every scene uses a
    held-out triple, so no caption (nor any "colour shape at position" phrase in it) was seen in training. Shapes of
    a scene sit in different cells and differ in colour from each other and from the background.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        count = 2 if rng.random() < two_shape_fraction else 1
        while True:
            if split == "heldout":
                picks = rng.choice(len(HELDOUT_TRIPLES), size=count, replace=False)
                triples = [HELDOUT_TRIPLES[i] for i in picks]
            else:
                triples = [(int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES))),
                            int(rng.integers(len(POSITIONS)))) for _ in range(count)]
            colours = [t[0] for t in triples]
            positions = [t[2] for t in triples]
            if len(set(colours)) < count or len(set(positions)) < count:
                continue
            if split == "train" and any(is_heldout(*t) for t in triples):
                continue
            backgrounds = [c for c in range(len(COLOURS)) if c not in colours]
            background = int(backgrounds[rng.integers(len(backgrounds))])
            break
        shapes = tuple(
            Shape(colour=int(c), shape=int(s), position=int(p),
                  dx=float(rng.uniform(-JITTER, JITTER)), dy=float(rng.uniform(-JITTER, JITTER)),
                  size=float(rng.uniform(*SIZE_RANGE)))
            for c, s, p in triples)
        scenes.append(Scene(background=background, shapes=shapes))
    return scenes


def cell_centre(position: int) -> tuple[float, float]:
    """(x, y) pixel coordinates of the centre of grid cell ``position``."""
    row, column = divmod(position, 3)
    return (column + 0.5) * CELL, (row + 0.5) * CELL


def _palette() -> torch.Tensor:
    return torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1.0


def _upload(array: np.ndarray, device) -> torch.Tensor:
    """A CPU array onto ``device``; to a GPU through pinned memory, so the copy does not wait for queued kernels."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if device is not None and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device) if device is not None else tensor


def render(scenes: Sequence[Scene], device=None) -> torch.Tensor:
    """Images of ``scenes`` as a float32 tensor [N, 3, 64, 64] in [-1, 1] (the VAE's input range)."""
    n = len(scenes)
    slots = max((len(s.shapes) for s in scenes), default=0)
    palette = _palette().numpy()
    # One array of every parameter, one upload: background RGB, then per slot present, RGB, kind, cx, cy, r.
    params = np.zeros((n, 3 + 8 * slots), dtype=np.float32)
    for i, scene in enumerate(scenes):
        params[i, :3] = palette[scene.background]
        for k, shape in enumerate(scene.shapes):
            x, y = cell_centre(shape.position)
            params[i, 3 + 8 * k: 3 + 8 * (k + 1)] = (1.0, *palette[shape.colour], shape.shape, x + shape.dx,
                                                     y + shape.dy, shape.size)
    params = _upload(params, device)
    size = IMAGE_SIZE * SUPERSAMPLE
    coords = (torch.arange(size, dtype=torch.float32, device=params.device) + 0.5) / SUPERSAMPLE
    ys, xs = coords.view(1, size, 1), coords.view(1, 1, size)
    image = params[:, :3].view(n, 3, 1, 1).expand(n, 3, size, size)
    for k in range(slots):
        present, colour, kind, cx, cy, r = params[:, 3 + 8 * k: 3 + 8 * (k + 1)].split([1, 3, 1, 1, 1, 1], dim=1)
        present, kind, cx, cy, r = (t.view(n, 1, 1) for t in (present, kind, cx, cy, r))
        dx, dy = xs - cx, ys - cy
        circle = dx ** 2 + dy ** 2 <= r ** 2
        square = (dx.abs() <= r) & (dy.abs() <= r)
        # Upright triangle: apex 1.1 r above the centre, base 0.9 r below it, half-width at the base 1.1 r.
        top = -1.1 * r
        triangle = (dy >= top) & (dy <= 0.9 * r) & (dx.abs() <= 1.1 * r * (dy - top) / (2.0 * r))
        mask = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle)) & (present > 0)
        image = torch.where(mask.unsqueeze(1), colour.view(n, 3, 1, 1), image)
    return torch.nn.functional.avg_pool2d(image, SUPERSAMPLE)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8 (what ``output_type="np"`` images become times 255)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def cell_colour(image: np.ndarray, position: int) -> str:
    """The palette colour nearest to the mean of the pixels around the centre of cell ``position``.

    ``image`` is [H, W, 3], uint8 0..255 or float 0..1 (a pipeline's ``output_type="np"``).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.max() <= 1.0:
        image = image * 255.0
    scale = image.shape[0] / IMAGE_SIZE
    x, y = cell_centre(position)
    half = PROBE_HALF * scale
    y0, y1 = int(round(y * scale - half)), int(round(y * scale + half)) + 1
    x0, x1 = int(round(x * scale - half)), int(round(x * scale + half)) + 1
    mean = image[y0:y1, x0:x1, :3].reshape(-1, 3).mean(axis=0)
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    return COLOUR_NAMES[int(np.argmin(((palette - mean) ** 2).sum(axis=1)))]


def shape_hits(image: np.ndarray, scene: Scene) -> list[bool]:
    """For each shape of ``scene``: does ``image`` show the shape's colour at the shape's position?"""
    return [cell_colour(image, s.position) == COLOUR_NAMES[s.colour] for s in scene.shapes]


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (the inverse of ``Scene.caption``; shapes at their cell centres, size 8).

    Raises ValueError naming the part that is not of the form "a red circle at the top left [and ...] on a blue
    background".
    """
    words = text.strip().rstrip(".")
    head, sep, tail = words.rpartition(" on ")
    background = tail.split()
    if not sep or len(background) != 3 or background[2] != "background" or background[1] not in COLOURS:
        raise ValueError(f"caption {text!r} does not end in 'on a <colour> background' (colours: "
                         f"{', '.join(COLOUR_NAMES)})")
    shapes = []
    for phrase in head.split(" and "):
        what, at, where = phrase.partition(" at the ")
        parts = what.split()
        if not at or len(parts) != 3 or parts[1] not in COLOURS or parts[2] not in SHAPES or where not in POSITIONS:
            raise ValueError(f"{phrase!r} in caption {text!r} is not '<a/an> <colour> <shape> at the <position>' "
                             f"(shapes: {', '.join(SHAPES)}; positions: {', '.join(POSITIONS)})")
        shapes.append(Shape(colour=COLOUR_NAMES.index(parts[1]), shape=SHAPES.index(parts[2]),
                            position=POSITIONS.index(where)))
    return Scene(background=COLOUR_NAMES.index(background[1]), shapes=tuple(shapes))


FREE_CORNERS = (0, 2, 6, 8)  # grid cells where the background shows when no shape sits there


def scene_problems(image: np.ndarray, scene: Scene | str) -> list[str]:
    """Where ``image`` departs from ``scene`` (or a caption) under the pixel test: each shape's colour at its cell
    (``shape_hits``) and the background colour in every corner cell no shape occupies. Empty: the scene is drawn."""
    scene = parse_caption(scene) if isinstance(scene, str) else scene
    problems = [f"{s.phrase()}: the cell shows {cell_colour(image, s.position)}"
                for s, hit in zip(scene.shapes, shape_hits(image, scene)) if not hit]
    used = {s.position for s in scene.shapes}
    background = COLOUR_NAMES[scene.background]
    for position in FREE_CORNERS:
        seen = cell_colour(image, position)
        if position not in used and seen != background:
            problems.append(f"background at the {POSITIONS[position]}: {seen}, not {background}")
    return problems
