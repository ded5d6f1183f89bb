"""Shared geometry of the embedded datasets: curves and outlines, the hand-drawn line style
(resampled, wobbling, jittered strokes), random affine / smooth warps, smooth noise, and the
per-item random streams."""
import colorsys
import math

import numpy as np
from PIL import Image

MAX_STROKE_POINTS = 60   # per resampled stroke (hand_polyline): long lines get a coarser step


def rng_for(seed, *stream):
    """An independent random stream per (seed, purpose, item): items do not depend on each other
    or on the order of generation (so it could be parallelised without changing a byte)."""
    return np.random.default_rng([int(seed), *[int(s) for s in stream]])


# ----------------------------------------------------------------------------- curves, outlines
def bezier(ctrl, n=16):
    """n points on the Bezier curve with control points ctrl (k, d) (de Casteljau)."""
    p = np.repeat(np.asarray(ctrl, float)[None], n, axis=0)
    t = np.linspace(0, 1, n)[:, None, None]
    while p.shape[1] > 1:
        p = p[:, :-1] * (1 - t) + p[:, 1:] * t
    return p[:, 0]


def ellipse(cx, cy, rx, ry, n=32, a0=0.0, a1=2 * math.pi):
    """Points on an ellipse arc from angle a0 to a1 (open: the end point is not repeated)."""
    a = np.linspace(a0, a1, n, endpoint=abs(a1 - a0) < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def rounded_rect(x0, y0, x1, y1, r_top, r_bottom=0.0, n=6):
    """Outline of a rectangle (y up) whose top / bottom corners are rounded."""
    pts = []
    for (cx, cy, r, a0) in ((x1, y0, r_bottom, -0.5), (x1, y1, r_top, 0.0),
                            (x0, y1, r_top, 0.5), (x0, y0, r_bottom, 1.0)):
        r = min(r, (x1 - x0) / 2, (y1 - y0) / 2)
        sx = -1 if cx == x1 else 1
        sy = -1 if cy == y1 else 1
        pts.append(ellipse(cx + sx * r, cy + sy * r, r, r, n, a0 * math.pi, (a0 + 0.5) * math.pi)
                   if r > 0 else np.array([[cx, cy]]))
    return np.concatenate(pts)


def normals(c):
    """Unit normals of a polyline (n >= 2 points), one per point."""
    d = np.gradient(c, axis=0)
    return np.stack([-d[:, 1], d[:, 0]], 1) / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)


def ribbon(centre, widths):
    """Polygon of a band of the given widths around a polyline (legs, rails, slats)."""
    c = np.asarray(centre, float)
    w = np.broadcast_to(np.asarray(widths, float), (len(c),))
    n = normals(c)
    return np.concatenate([c + n * w[:, None] / 2, (c - n * w[:, None] / 2)[::-1]])


def arc_length(pts):
    """Cumulative length along a polyline, 0 at its first point."""
    return np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


def resample(pts, step, max_points=MAX_STROKE_POINTS):
    """Points every `step` along the polyline (at least 2, at most max_points)."""
    s = arc_length(pts)
    n = int(np.clip(round(s[-1] / step) + 1, 2, max_points))
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], 1)


def bbox(pts):
    """[x_min, y_min, x_max, y_max] of (n, 2) points."""
    pts = np.asarray(pts)
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


def hsv(h, s, v):
    """An RGB colour (0-255 floats) from hue (wrapped), saturation and value."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255


def smooth_noise(rng, size, cells):
    """Low-frequency noise in [-1, 1]: a random grid of `cells` x `cells` upsampled bicubically."""
    g = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    up = Image.fromarray(g).resize((size, size), Image.BICUBIC)
    return np.asarray(up, np.float32) / 127.5 - 1


# ----------------------------------------------------------------------------- hand-drawn lines
def hand_polyline(pts, rng, step, wobble, jitter, closed=False, period=(40, 140)):
    """A polyline as a person draws it: resampled, a slow wobble across the line (at most 4 %
    of its length, so small marks stay recognisable), per-point jitter, a closed loop ending
    with a small gap or overshoot instead of exactly at its start."""
    pts = np.asarray(pts, float)
    if closed:
        # Start anywhere on the loop; end a little short of / past the start point.
        k = int(rng.integers(len(pts)))
        pts = np.concatenate([pts[k:], pts[:k + 1]])
        extra = rng.uniform(-0.06, 0.08)
        s = arc_length(pts)
        if extra < 0:
            keep = s <= s[-1] * (1 + extra)
            pts = pts[keep] if keep.sum() >= 2 else pts
        else:
            pts = np.concatenate([pts, pts[1:][arc_length(pts[1:]) <= s[-1] * extra + 1e-6]])
    if rng.random() < 0.5:
        pts = pts[::-1]
    p = resample(pts, step)
    s = arc_length(p)
    n = normals(p)
    off = np.zeros(len(p))
    amp = min(wobble, 0.04 * s[-1])
    for _ in range(2):
        off += amp * rng.uniform(0.3, 1) * np.sin(2 * math.pi * s / rng.uniform(*period) + rng.uniform(0, 6.3))
    return p + n * off[:, None] + rng.normal(0, jitter, p.shape)


def random_affine(rng, rot, scale, shear, shift):
    """2x3 matrix about the origin: rotation (rad), isotropic scale range, shear, translation."""
    a = rng.uniform(-rot, rot)
    s = rng.uniform(*scale)
    sx = s * rng.uniform(0.94, 1.06)
    sh = rng.uniform(-shear, shear)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = r @ np.array([[sx, sh], [0, s]])
    return np.concatenate([m, rng.uniform(-shift, shift, (2, 1))], 1)


def apply_affine(m, pts, centre):
    """Points moved by the 2x3 matrix m about `centre`."""
    return (pts - centre) @ m[:, :2].T + centre + m[:, 2]


def smooth_warp(rng, amp, wavelength, waves=3):
    """A random smooth displacement field (sum of plane waves): the drawing's proportions drift
    the way a free-hand copy's do (a longer backrest, a narrower seat), not just an affine."""
    params = []
    for _ in range(waves):
        a = rng.uniform(0, 2 * math.pi)
        params.append((np.array([math.cos(a), math.sin(a)]) / rng.uniform(*wavelength),
                       rng.uniform(0, 2 * math.pi), rng.normal(0, amp, 2)))

    def warp(pts):
        out = np.array(pts, float)
        for k, phase, vec in params:
            out += np.sin(2 * math.pi * (pts @ k) + phase)[:, None] * vec
        return out
    return warp
