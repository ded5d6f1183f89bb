"""Sketch geometry: vector strokes -> raster + one box per stroke, raster sketches -> ink nodes.

Box convention (everywhere in the data layer): a box is [x1, y1, x2, y2] in continuous pixel
coordinates where pixel (col i, row j) spans [i, i+1) x [j, j+1); the box covers the pixels
x1 <= i < x2, y1 <= j < y2. So the whole W x H image is [0, 0, W, H] (as in the QMUL box
pickles) and a resize by a factor f is an exact multiplication by f.

Vector sketches (QMUL layout, Folder `.npy`): float array (L, 3) = x, y, pen on a 256 x 256 canvas,
pen = 1 on the LAST point of each stroke. One node per stroke (docs/method.md, section 2; no whole-sketch box).

Raster sketches (SWIRE, Folder images): nodes are the connected components of the ink, nearby
blobs merged (see `group_boxes`), plus the whole-image box first.

Coarse sketches (`--sketch_detail`, the paper's Sketch-coarse / coarse++ study):
  - vector: strokes are kept in drawing order; keep the shortest prefix of strokes whose ink length
    (sum of segment lengths; a dot has length 0) reaches 70 % (coarse) / 50 % (coarse++) of the
    sketch's total ink length, always at least one stroke. Later strokes are usually the detail.
  - raster (no drawing order): ink components (before merging) sorted by pixel count, largest
    first; keep the largest until they hold 70 % / 50 % of the ink pixels (at least one); the
    others are erased from the image.
  Both rules are monotone: coarse++ keeps a subset of coarse, which keeps a subset of full.

Errors are `SketchError`; dataset.py adds the file name and turns them into DatasetError.
"""
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageDraw

from files import as_rgb

CANVAS = 256
# Vector coordinates up to this many pixels off the 256 canvas are clamped onto it (a counted
# repair); further off is an error (probably a different coordinate frame). Real ChairV2 lies in
# [33, 223], so it needs no repair.
OFF_CANVAS_TOLERANCE = 16
DETAIL_FRACTION = {'full': 1.0, 'coarse': 0.7, 'coarse++': 0.5}
# The most strokes and points a vector sketch may have (--max_sketch_strokes / --max_sketch_points):
# the work of drawing it, its nodes and its sequence grow with them. Real ChairV2 sketches have at
# most 15 strokes.
MAX_STROKES, MAX_POINTS = 64, 4096
# Raster sketches: a pixel is ink when its ink intensity (0 = background, 255 = full ink) > this.
INK_THRESHOLD = 128


class SketchError(ValueError):
    """A sketch that cannot be used (no ink, one point, bad array, far off the canvas)."""


@dataclass(frozen=True)
class SketchStyle:
    """How sketches become images and nodes, built once from the options and passed down.

    detail: 'full' | 'coarse' | 'coarse++' (the coarse-sketch study); line_width: stroke width of
    vector sketches on the 256 canvas; merge_gap, max_nodes: ink grouping of raster sketches;
    whole_box: a whole-sketch node for vector sketches too (raster sketches always have one; the
    paper's vector sketches do not).
    """
    detail: str = 'full'
    line_width: int = 3
    merge_gap: float = 0.01
    max_nodes: int = 16
    whole_box: bool = False      # vector sketches: a node for the whole canvas before the strokes
    max_strokes: int = MAX_STROKES
    max_points: int = MAX_POINTS

    def clean(self, points):
        """clean_points within this style's stroke and point limits."""
        return clean_points(points, max_strokes=self.max_strokes, max_points=self.max_points)

    def vector(self, points):
        """Cleaned (L, 3) points -> (PIL RGB image, boxes float32 (n, 4)): one box per stroke kept,
        after the whole canvas's with whole_box."""
        img, boxes = render_vector(points, self.detail, self.line_width)
        if self.whole_box:
            boxes = np.concatenate([np.array([[0, 0, CANVAS, CANVAS]], dtype=np.float32), boxes])
        return img, boxes

    def raster(self, img):
        """Raster sketch -> (PIL RGB dark ink on white, boxes float32 (n, 4), info); see raster_nodes."""
        return raster_nodes(img, self.detail, self.merge_gap, self.max_nodes)


# ----------------------------------------------------------------------------- vector sketches
def clean_points(points, canvas=CANVAS, tolerance=OFF_CANVAS_TOLERANCE, max_strokes=MAX_STROKES,
                 max_points=MAX_POINTS):
    """Validate a vector sketch and clamp coordinates slightly off the canvas.

    points: array-like (L, 3) x, y, pen. Returns (float64 (L, 3), repairs: list[str]) where
    repairs names what was fixed ('clamped to canvas', 'last stroke not pen-terminated').
    A last point with pen = 0 is taken as the end of the last stroke. More than max_points points
    or max_strokes strokes is an error (the work a sketch causes is bounded).
    """
    if np.iscomplexobj(points):
        raise SketchError('a complex array; a vector sketch holds real numbers (x, y, pen)')
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise SketchError(f'not a numeric (L, 3) array: {type(points).__name__}') from None
    if p.ndim != 2 or p.shape[1] != 3:
        raise SketchError(f'expected an (L, 3) array x, y, pen, got shape {p.shape}')
    if len(p) > max_points:
        raise SketchError(f'{len(p)} points, more than --max_sketch_points {max_points}')
    if len(p) == 0:
        raise SketchError('empty sketch (no points, no ink)')
    if len(p) == 1:
        raise SketchError('sketch has only one point')
    if not np.isfinite(p).all():
        raise SketchError('sketch has NaN or infinite values')
    if not np.isin(p[:, 2], (0, 1)).all():
        raise SketchError(f'pen flags must be 0 or 1, found {np.setdiff1d(p[:, 2], [0, 1])[:5].tolist()}')
    strokes = int((p[:-1, 2] == 1).sum()) + 1
    if strokes > max_strokes:
        raise SketchError(f'{strokes} strokes, more than --max_sketch_strokes {max_strokes}')
    repairs = []
    lo, hi = p[:, :2].min(), p[:, :2].max()
    if lo < -tolerance or hi > canvas - 1 + tolerance:
        raise SketchError(f'coordinates off the {canvas} canvas: range [{lo:.1f}, {hi:.1f}] '
                          f'(tolerance {tolerance} px)')
    if lo < 0 or hi > canvas - 1:
        p = p.copy()
        p[:, :2] = p[:, :2].clip(0, canvas - 1)
        repairs.append('vector sketch coordinates clamped to the canvas')
    if p[-1, 2] != 1:
        repairs.append('last stroke not pen-terminated (ended at the last point)')
    return p, repairs


def split_strokes(points):
    """(L, 3) x, y, pen -> list of float arrays (n_i, 2), one per stroke, in drawing order.

    A stroke ends at a point with pen = 1; points after the last pen = 1 form a final stroke.
    """
    p = np.asarray(points, dtype=np.float64)
    ends = np.flatnonzero(p[:, 2] == 1) + 1
    return [s[:, :2] for s in np.split(p, ends) if len(s)]


def stroke_lengths(strokes):
    """Ink length of each stroke: float array (n_strokes,), sum of its segment lengths."""
    return np.array([np.linalg.norm(np.diff(s, axis=0), axis=1).sum() for s in strokes])


def keep_count(amounts, detail):
    """How many leading items to keep so they hold DETAIL_FRACTION[detail] of sum(amounts).

    amounts: 1-D array in priority order. Returns an int in [1, len(amounts)].
    """
    frac = DETAIL_FRACTION[detail]
    if frac >= 1.0:
        return len(amounts)
    cum = np.cumsum(amounts)
    # First prefix reaching the fraction (small slack for float round-off); at least one item.
    return int(min(len(amounts), np.searchsorted(cum, frac * cum[-1] - 1e-9) + 1))


def select_strokes(strokes, detail='full'):
    """Drop fine detail: keep the first strokes holding 100/70/50 % of the ink length."""
    return strokes[:keep_count(stroke_lengths(strokes), detail)]


def select_points(points, detail='full'):
    """(L, 3) x, y, pen -> the points of the strokes kept at `detail` (select_strokes), same format."""
    p = np.asarray(points, dtype=np.float64)
    ends = np.flatnonzero(p[:, 2] == 1) + 1
    parts = [s for s in np.split(p, ends) if len(s)]
    kept = keep_count(stroke_lengths([s[:, :2] for s in parts]), detail)
    return np.concatenate(parts[:kept])


def draw_stroke(draw, stroke, line_width):
    """Draw one stroke (n, 2) with ImageDraw; a single point (or zero-length stroke) is a dot."""
    if len(stroke) == 1 or np.ptp(stroke, axis=0).max() == 0:
        x, y = stroke[0]
        r = line_width / 2 - 0.5
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        draw.point((x, y), fill=255)  # ellipse draws nothing at width 1
    else:
        draw.line([tuple(q) for q in stroke], fill=255, width=line_width, joint='curve')


def rasterise(strokes, canvas=CANVAS, line_width=3):
    """Strokes -> (PIL RGB canvas x canvas, dark ink on white; boxes float32 (n_strokes, 4)).

    Box i = bounding box of stroke i's ink pixels (line width included, clipped to the canvas,
    right/bottom exclusive as PIL's getbbox).
    """
    if not strokes:
        raise SketchError('no strokes to draw')
    ink = Image.new('L', (canvas, canvas), 0)
    boxes = []
    for s in strokes:
        # Each stroke on its own layer so that its box is exactly its own ink.
        layer = Image.new('L', (canvas, canvas), 0)
        draw_stroke(ImageDraw.Draw(layer), s, line_width)
        bbox = layer.getbbox()
        if bbox is None:  # cannot happen with clamped coordinates; guard against silent loss
            raise SketchError('a stroke drew no ink')
        boxes.append(bbox)
        ink = ImageChops.lighter(ink, layer)
    return ImageChops.invert(ink).convert('RGB'), np.array(boxes, dtype=np.float32)


def render_vector(points, detail='full', line_width=3, canvas=CANVAS):
    """Cleaned (L, 3) points -> (PIL RGB image, boxes float32 (n_strokes_kept, 4))."""
    return rasterise(select_strokes(split_strokes(points), detail), canvas, line_width)


# ----------------------------------------------------------------------------- raster sketches
def ink_intensity(img):
    """PIL image -> uint8 (H, W) ink intensity, 0 = background, 255 = full ink.

    Polarity is detected from the border: the median of the border pixels is the background
    (sketches rarely touch the border). Light background -> dark ink (invert); dark background
    -> light ink (SWIRE's white on black, used as is).
    """
    g = np.asarray(as_rgb(img).convert('L'))
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    return 255 - g if np.median(border) >= 128 else g.copy()


def ink_components(mask):
    """bool (H, W) ink mask -> (pixel counts (n,), label image int32 (H, W)); label i + 1 is
    component i (8-connected, cv2's scan order)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return stats[1:, cv2.CC_STAT_AREA], labels


def group_boxes(mask, gap):
    """Ink boxes with nearby blobs merged: bool (H, W) -> float32 (n, 4), in scan order.

    Two blobs are merged when at most `gap` background pixels separate their ink (in x and in y):
    the mask is dilated with a (gap + 1)-square kernel, which joins exactly those, and each
    connected group's box is the bounding box of its ORIGINAL ink. Transitive by construction
    (no iteration needed). Distance is measured between ink, not boxes, so the contents of a
    drawn frame or container stay separate nodes from the frame.
    """
    k = int(round(gap)) + 1
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)) if k > 1 else mask.astype(np.uint8)
    _, groups = cv2.connectedComponents(grown, connectivity=8)
    ys, xs = np.nonzero(mask)
    g = groups[ys, xs]
    ids = np.unique(g)  # scan order of the grown components
    return np.array([[xs[g == i].min(), ys[g == i].min(), xs[g == i].max() + 1, ys[g == i].max() + 1]
                     for i in ids], dtype=np.float32)


def raster_nodes(img, detail='full', merge_gap=0.01, max_nodes=16):
    """Raster sketch -> (PIL RGB dark ink on white, same size; boxes float32 (n, 4); info dict).

    Nodes: box 0 = the whole image, then the ink (ink > INK_THRESHOLD) grouped by `group_boxes`
    with gap = merge_gap * the longer image side, in scan order. At most max_nodes nodes in all
    (0 = no cap): when there are more, the largest boxes (area) are kept.
    info: {'capped': bool}. Coarse detail erases the smallest components (module docstring).
    """
    ink = ink_intensity(img)
    mask = ink > INK_THRESHOLD
    if not mask.any():
        raise SketchError('no ink (blank sketch)')
    if detail != 'full':
        area, labels = ink_components(mask)
        keep = np.argsort(-area, kind='stable')[:keep_count(np.sort(area)[::-1], detail)]
        dropped = ~np.isin(labels, keep + 1) & (labels > 0)
        # Dilate so the anti-aliased rim of an erased component goes too.
        ink[cv2.dilate(dropped.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = 0
        mask &= ~dropped
    h, w = mask.shape
    nodes = group_boxes(mask, merge_gap * max(w, h))
    capped = bool(max_nodes) and len(nodes) > max_nodes - 1
    if capped:
        big = np.argsort(-(nodes[:, 2] - nodes[:, 0]) * (nodes[:, 3] - nodes[:, 1]), kind='stable')
        nodes = nodes[np.sort(big[:max(max_nodes - 1, 0)])]
    nodes = np.concatenate([np.array([[0, 0, w, h]], dtype=np.float32), nodes])
    return Image.fromarray(255 - ink).convert('RGB'), nodes, {'capped': capped}
