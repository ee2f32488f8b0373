"""Glyphs: a many-class offline image dataset rendered from the DejaVu fonts that ship inside matplotlib.

A class is one Unicode code point; its images are the glyph in the 12 DejaVu styles (Sans / Serif / Sans Mono,
each regular, bold, oblique and bold oblique) with a small seeded affine jitter (scale, rotation, shear, shift)
and stroke/intensity variation, 1 x 28 x 28 uint8 like Fashion-MNIST. It exists for claim C3 (Ioffe 2017,
sec. 4.3): 16 label draws out of 10 classes repeat labels, out of hundreds they almost never do, as in the
paper's 1000 ImageNet classes.

Determinism: outlines are read with fontTools and rasterized here (scanline, non-zero winding, 4 x 4
supersampling) with float64 arithmetic on coordinates rounded to 1/256 of a sub-pixel, so the bytes depend on
the font files and the parameters, not on FreeType's version. The cache file is keyed by the parameters, the
generator version and the font files' hashes; `digest` (sha256 of images and labels) is stored beside it.

Classes: code points present in every style, of Unicode category letter/number/punctuation/symbol, with no
canonical decomposition (no accented variants that differ by a few pixels), a non-empty outline, and a
canonical rendering (DejaVu Sans, no jitter) that differs from every class kept before it by at least
`min_distance` (mean absolute pixel difference, 0..1): visually identical glyphs (e.g. Latin A / Greek Alpha)
are one class. Candidates are taken in code-point order, so the first `num_classes` are the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from bnlab.data.errors import DatasetNotFoundError

GENERATOR_VERSION = 1  # bump when the rendering changes, so old cache files are not reused
STYLES = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
)
SUPERSAMPLE = 4  # sub-pixels per pixel side
CURVE_SEGMENTS = 6  # line segments per quadratic/cubic curve piece
BOX = 20 / 28  # the glyph's longer bounding-box side fills this fraction of the image (MNIST's 20 of 28 px)


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font_path(style: str) -> Path:
    path = font_dir() / f"{style}.ttf"
    if not path.is_file():
        raise DatasetNotFoundError(f"glyphs: font {path} not found (it ships with matplotlib's mpl-data)")
    return path


def _cache_root() -> Path:
    return Path(os.environ.get("BNLAB_CACHE", Path.home() / ".cache" / "bnlab")) / "glyphs"


@cache
def _font(style: str):
    from fontTools.ttLib import TTFont

    font = TTFont(_font_path(style))
    return font["glyf"], font.getBestCmap()


def _flatten_contour(points: np.ndarray, on: np.ndarray) -> np.ndarray:
    """A closed TrueType contour (quadratic B-spline: on/off-curve points) as a polygon (K, 2)."""
    if not on.any():  # all off-curve: start at the implied point between the last and the first
        points = np.vstack([(points[0] + points[-1]) / 2, points])
        on = np.concatenate([[True], on])
    start = int(np.argmax(on))
    points, on = np.roll(points, -start, axis=0), np.roll(on, -start)
    # an implied on-curve point sits midway between two consecutive off-curve points (TrueType spec)
    both_off = ~on & ~np.roll(on, -1)
    mids = (points[both_off] + np.roll(points, -1, axis=0)[both_off]) / 2
    order = np.argsort(np.concatenate([np.arange(len(points)), np.flatnonzero(both_off) + 0.5]), kind="stable")
    points = np.concatenate([points, mids])[order]
    on = np.concatenate([on, np.ones(len(mids), bool)])[order]
    # each on-curve point stays; each off-curve point j becomes CURVE_SEGMENTS - 1 samples of the quadratic
    # Bezier from points[j - 1] to points[j + 1] with control point points[j]
    count = np.where(on, 1, CURVE_SEGMENTS - 1)
    offset = np.cumsum(count) - count
    out = np.empty((count.sum(), 2))
    out[offset[on]] = points[on]
    t = np.arange(1, CURVE_SEGMENTS)[None, :, None] / CURVE_SEGMENTS
    prev, nxt = np.roll(points, 1, axis=0)[~on, None], np.roll(points, -1, axis=0)[~on, None]
    curve = (1 - t) ** 2 * prev + 2 * (1 - t) * t * points[~on, None] + t**2 * nxt  # (Q, S - 1, 2)
    out[offset[~on, None] + np.arange(CURVE_SEGMENTS - 1)] = curve
    return out


@cache
def outline_edges(style: str, code_point: int) -> np.ndarray:
    """(E, 4) edges x0, y0, x1, y1 of the glyph, normalized: bounding box centred at 0, longer side 1, y down."""
    glyf, cmap = _font(style)
    coords, ends, flags = glyf[cmap[code_point]].getCoordinates(glyf)
    if len(coords) == 0:
        return np.zeros((0, 4))
    pts, on = np.asarray(coords, float), (np.frombuffer(bytes(flags), np.uint8) & 1).astype(bool)
    edges, begin = [], 0
    for end in ends:
        poly = _flatten_contour(pts[begin : end + 1], on[begin : end + 1])
        begin = end + 1
        if len(poly) >= 2:
            edges.append(np.concatenate([poly, np.roll(poly, -1, axis=0)], axis=1))  # closes the contour
    e = np.concatenate(edges) if edges else np.zeros((0, 4))
    if len(e) == 0 or np.ptp(e[:, [1, 3]]) == 0:  # no area
        return np.zeros((0, 4))
    xs, ys = e[:, [0, 2]], e[:, [1, 3]]
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    side = max(xs.max() - xs.min(), ys.max() - ys.min())
    return np.stack([(e[:, 0] - cx) / side, (cy - e[:, 1]) / side, (e[:, 2] - cx) / side, (cy - e[:, 3]) / side], 1)


def rasterize(edges: np.ndarray, affines: np.ndarray, size: int) -> np.ndarray:
    """Coverage in [0, 1], shape (N, size, size), of one outline under N affine maps (N, 2, 3) to pixel units.

    Non-zero winding rule (TrueType's) at SUPERSAMPLE x SUPERSAMPLE sample points per pixel.
    """
    n, s = len(affines), SUPERSAMPLE
    res = size * s
    if len(edges) == 0:
        return np.zeros((n, size, size))
    p0 = edges[None, :, 0:2] @ affines[:, :, :2].transpose(0, 2, 1) + affines[:, None, :, 2]
    p1 = edges[None, :, 2:4] @ affines[:, :, :2].transpose(0, 2, 1) + affines[:, None, :, 2]
    q = 256.0 * s  # coordinates on a 1/256 sub-pixel grid: last-bit differences between libms cannot matter
    x0, y0 = np.round(p0[..., 0] * q) / 256, np.round(p0[..., 1] * q) / 256  # sub-pixel units
    x1, y1 = np.round(p1[..., 0] * q) / 256, np.round(p1[..., 1] * q) / 256
    rows = np.arange(res) + 0.5  # sample centres
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    img, edge, row = np.nonzero((ylo[..., None] <= rows) & (rows < yhi[..., None]))
    t = (rows[row] - y0[img, edge]) / (y1[img, edge] - y0[img, edge])
    xc = x0[img, edge] + t * (x1[img, edge] - x0[img, edge])
    winding = np.where(y1[img, edge] > y0[img, edge], 1, -1)
    col = np.clip(np.floor(xc + 0.5), 0, res).astype(np.int64)  # samples j >= col lie right of the crossing
    acc = np.zeros((n, res, res + 1), np.int32)
    np.add.at(acc, (img, row, col), winding)
    inside = np.cumsum(acc, axis=2)[:, :, :res] != 0
    return inside.reshape(n, size, s, size, s).mean(axis=(2, 4))


def _candidates() -> list[int]:
    cmaps = [set(_font(style)[1]) for style in STYLES]
    common = set.intersection(*cmaps)
    return sorted(
        c for c in common if unicodedata.category(chr(c))[0] in "LNPS" and not unicodedata.decomposition(chr(c))
    )


@lru_cache(maxsize=8)
def select_classes(size: int, min_distance: float) -> tuple[int, ...]:
    """All code points that render non-empty and distinct (see the module docstring), in code-point order."""
    centre = np.array([[[BOX * size, 0, size / 2], [0, BOX * size, size / 2]]])
    candidates = _candidates()
    kept, images = [], np.empty((len(candidates), size * size))
    for cp in candidates:
        img = rasterize(outline_edges(STYLES[0], cp), centre, size)[0].ravel()
        if img.mean() < 0.01:  # empty or a few pixels at most
            continue
        if kept and np.abs(images[: len(kept)] - img).mean(1).min() < min_distance:
            continue
        if any(len(outline_edges(style, cp)) == 0 for style in STYLES[1:]):
            continue
        images[len(kept)] = img
        kept.append(cp)
    return tuple(kept)


def _affines(rng, n: int, size: int, jitter) -> np.ndarray:
    """n random maps from normalized glyph coordinates to pixels: scale, rotation, shear, shift (sub-pixel units
    are applied in rasterize)."""
    scale = BOX * size * rng.uniform(1 - jitter["scale"], 1 + jitter["scale"], n)
    angle = np.deg2rad(rng.uniform(-jitter["rotation"], jitter["rotation"], n))
    shear = rng.uniform(-jitter["shear"], jitter["shear"], n)
    shift = rng.uniform(-jitter["shift"], jitter["shift"], (n, 2))
    cos, sin = np.cos(angle), np.sin(angle)
    a = np.empty((n, 2, 3))
    a[:, 0, 0], a[:, 0, 1] = scale * cos, scale * (shear * cos - sin)
    a[:, 1, 0], a[:, 1, 1] = scale * sin, scale * (shear * sin + cos)
    a[:, :, 2] = size / 2 + shift
    return a


def _render_split(classes, per_class: int, styles: list[int], size: int, jitter, rng):
    """per_class images of every class; styles cycle through `styles` (so each style appears about equally)."""
    n_cls = len(classes)
    first = rng.integers(0, len(styles), (n_cls, 1))
    style_of = np.array(styles)[(np.arange(per_class)[None, :] + first) % len(styles)]
    affines = _affines(rng, n_cls * per_class, size, jitter).reshape(n_cls, per_class, 2, 3)
    gamma = rng.uniform(1 - jitter["stroke"], 1 + jitter["stroke"], (n_cls, per_class))
    peak = rng.uniform(1 - jitter["intensity"], 1.0, (n_cls, per_class))
    out = np.empty((n_cls, per_class, size, size), np.uint8)
    for k, cp in enumerate(classes):
        for s in np.unique(style_of[k]):
            where = np.flatnonzero(style_of[k] == s)
            cover = rasterize(outline_edges(STYLES[s], cp), affines[k, where], size)
            # coverage ** gamma: gamma < 1 thickens strokes (edge pixels brighter), > 1 thins them
            value = cover ** gamma[k, where, None, None] * peak[k, where, None, None]
            out[k, where] = np.round(value * 255).astype(np.uint8)
    labels = np.repeat(np.arange(n_cls), per_class)
    return out.reshape(-1, 1, size, size), labels


def generate(
    num_classes: int | None = 500,
    train_per_class: int = 40,
    test_per_class: int = 10,
    size: int = 28,
    holdout_style: str | None = None,
    min_distance: float = 0.04,
    jitter: dict | None = None,
    seed: int = 0,
):
    """Render the dataset: (train_x, train_y, test_x, test_y, num_classes) as numpy arrays, images uint8 NCHW."""
    jitter = {**DEFAULT_JITTER, **(jitter or {})}
    classes = select_classes(size, min_distance)
    if num_classes is not None:
        if num_classes > len(classes):
            raise ValueError(f"only {len(classes)} distinct glyph classes at min_distance={min_distance}")
        classes = classes[:num_classes]
    train_styles = [i for i, s in enumerate(STYLES) if s != holdout_style]
    if holdout_style is not None and len(train_styles) == len(STYLES):
        raise ValueError(f"unknown holdout_style {holdout_style!r} (allowed: {', '.join(STYLES)})")
    test_styles = list(range(len(STYLES))) if holdout_style is None else [STYLES.index(holdout_style)]
    # one generator, train drawn before test: test images are fresh draws, never copies of training ones
    rng = np.random.default_rng(seed)
    train_x, train_y = _render_split(classes, train_per_class, train_styles, size, jitter, rng)
    test_x, test_y = _render_split(classes, test_per_class, test_styles, size, jitter, rng)
    return train_x, train_y, test_x, test_y, len(classes)


DEFAULT_JITTER = {
    "scale": 0.12,  # longer side x U(1 - s, 1 + s)
    "rotation": 10.0,  # degrees, U(-r, r)
    "shear": 0.15,  # horizontal shear, U(-h, h)
    "shift": 1.5,  # pixels, U(-t, t) in x and y
    "stroke": 0.4,  # coverage ** U(1 - g, 1 + g)
    "intensity": 0.3,  # peak brightness U(1 - i, 1)
}


def _font_hashes() -> dict:
    return {s: hashlib.sha256(_font_path(s).read_bytes()).hexdigest()[:16] for s in STYLES}


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_glyphs(cfg):
    """(train_x, train_y, test_x, test_y, num_classes) as torch tensors, from the cache or rendered once."""
    import torch

    params = {
        "num_classes": cfg.get("num_classes", 500),
        "train_per_class": int(cfg.get("train_per_class", 40)),
        "test_per_class": int(cfg.get("test_per_class", 10)),
        "size": int(cfg.get("image_size", 28)),
        "holdout_style": cfg.get("holdout_style"),
        "min_distance": float(cfg.get("min_distance", 0.04)),
        "jitter": {**DEFAULT_JITTER, **dict(cfg.get("jitter") or {})},
        "seed": int(cfg.get("seed", 0)),
    }
    key_blob = json.dumps({**params, "version": GENERATOR_VERSION, "fonts": _font_hashes()}, sort_keys=True)
    key = hashlib.sha1(key_blob.encode()).hexdigest()[:16]
    root = Path(cfg.get("cache_dir") or _cache_root())
    path = root / f"glyphs_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            arrays = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
    else:
        *arrays, _ = generate(**params)
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **dict(zip(("train_x", "train_y", "test_x", "test_y"), arrays)), params=key_blob)
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in arrays)
    n_cls = int(train_y.max()) + 1
    return train_x, train_y.long(), test_x, test_y.long(), n_cls
