"""The tiny-sd "shapes world": captions, a renderer, and a rule-based prompt-adherence metric.

tiny-sd is trained on procedurally drawn images of one shape (a colour, a size, a position) on a
plain background. The same definitions parse a prompt back into its attributes and read a
generated image, so adherence needs no downloaded model. numpy only: the deployable runtime and
the accuracy checks import this without torch.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.16, "large": 0.30}  # half-extent as a fraction of the image side
POSITIONS = {
    "top left": (0.3, 0.3),
    "top right": (0.3, 0.7),
    "bottom left": (0.7, 0.3),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}
ATTRIBUTES = ("colour", "shape", "size", "position", "background")

_PROMPT_RE = re.compile(
    r"^an? (?P<size>small|large) (?P<colour>\w+) (?P<shape>\w+) (?:at|in) the "
    r"(?P<position>top left|top right|bottom left|bottom right|center) on an? (?P<background>\w+) "
    r"background$"
)


@dataclass(frozen=True)
class Scene:
    """One image of the shapes world."""

    colour: str
    shape: str
    size: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"at the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """Every scene of the world, in a fixed order (shape and background colours differ)."""
    return [
        Scene(c, s, z, p, b)
        for c, s, z, p, b in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS, COLOURS)
        if c != b
    ]


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt describes, or None when it is not a shapes-world caption."""
    m = _PROMPT_RE.match(prompt.strip().lower())
    if not m:
        return None
    d = m.groupdict()
    if d["colour"] not in COLOURS or d["background"] not in COLOURS or d["shape"] not in SHAPES:
        return None
    return Scene(**d)


def render(scene: Scene, size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw a scene as HxWx3 uint8, anti-aliased by 4x supersampling.

    With ``rng`` the position, size and colours jitter slightly (training data); without, the
    canonical image is drawn.
    """
    ss = 4
    n = size * ss
    cy, cx = POSITIONS[scene.position]
    half = SIZES[scene.size]
    fg = np.array(COLOURS[scene.colour], np.float32)
    bg = np.array(COLOURS[scene.background], np.float32)
    if rng is not None:
        cy += rng.uniform(-0.05, 0.05)
        cx += rng.uniform(-0.05, 0.05)
        half *= rng.uniform(0.85, 1.15)
        fg = np.clip(fg + rng.normal(0, 8, 3), 0, 255)
        bg = np.clip(bg + rng.normal(0, 8, 3), 0, 255)
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    dy, dx = yy - cy, xx - cx
    if scene.shape == "circle":
        mask = dy**2 + dx**2 <= half**2
    elif scene.shape == "square":
        mask = (np.abs(dy) <= half * 0.9) & (np.abs(dx) <= half * 0.9)
    else:  # upward triangle inscribed in the same box
        top, bottom = -half, half * 0.8
        t = (dy - top) / (bottom - top)
        mask = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * half)
    img = np.where(mask[..., None], fg, bg)
    img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    ref = np.array([COLOURS[k] for k in names], np.float32)
    return names[int(np.argmin(((ref - rgb) ** 2).sum(axis=1)))]


def analyse_image(img: np.ndarray) -> Scene | None:
    """Read the scene back from an HxWx3 uint8 image; None when no foreground shape is found.

    Background: the median colour of the border. Foreground: pixels far from it. Colour: nearest
    palette colour to the foreground's median; position: the foreground centroid; size: its area;
    shape: how much of its bounding box it fills (square ~1, circle ~0.79, triangle ~0.55),
    with the centroid's vertical offset in the box to tell triangles from the rest.
    """
    img = np.asarray(img, np.float32)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((img - bg) ** 2).sum(axis=-1))
    mask = dist > 60.0
    area = mask.mean()
    if area < 0.01:
        return None
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean() / h, xs.mean() / w
    fg = np.median(img[mask], axis=0)
    y0, y1 = ys.min(), ys.max()
    x0, x1 = xs.min(), xs.max()
    box = max((y1 - y0 + 1) * (x1 - x0 + 1), 1.0)
    fill = mask.sum() / box
    rel_cy = (ys.mean() - y0) / max(y1 - y0, 1.0)  # triangles are bottom-heavy (~0.6)
    if fill < 0.66 or rel_cy > 0.58:
        shape = "triangle"
    elif fill < 0.93:
        shape = "circle"
    else:
        shape = "square"
    vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else None
    horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else None
    position = f"{vert} {horiz}" if vert and horiz else "center" if not (vert or horiz) else "off"
    size = "small" if area < 0.12 else "large"
    return Scene(_nearest_colour(fg), shape, size, position, _nearest_colour(bg))


@dataclass(frozen=True)
class AdherenceResult:
    """Per-attribute share (0-100) of images whose attribute matches their prompt."""

    n: int
    colour: float
    shape: float
    size: float
    position: float
    background: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def adherence(prompts: list[str], images: list[np.ndarray]) -> AdherenceResult:
    """Score images against the prompts they were generated from."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    hits = {a: 0 for a in ATTRIBUTES}
    n = 0
    for prompt, img in zip(prompts, images):
        want = parse_prompt(prompt)
        if want is None:
            raise ValueError(f"not a shapes-world prompt: {prompt!r}")
        n += 1
        got = analyse_image(img)
        if got is None:
            continue
        for a in ATTRIBUTES:
            hits[a] += getattr(got, a) == getattr(want, a)
    pct = {a: 100.0 * hits[a] / max(n, 1) for a in ATTRIBUTES}
    return AdherenceResult(n=n, **pct)
