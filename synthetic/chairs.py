"""The `Synthetic` dataset (QMUL layout): chair designs in families, their photos, region boxes
and free-hand vector sketches, written by `generate_chairs`.

Photos are rendered filled, shaded (Lambert faces, a lighting gradient, specular for glossy
materials), coloured and textured (wood grain, fabric weave, brushed metal, leather) on a
near-white product-shot background with a floor shadow. Sketches are drawn from the same parts
(chair_parts.py), coarse to fine (the silhouette first, then the main parts, the details last),
as thin strokes with wobble, jitter, a global affine distortion and randomly omitted parts,
stored as (x, y, pen) vectors on the 256 canvas."""
import hashlib
import json
import math
import pickle

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from proposals import BOX_MIN_SIDE, BOX_TOP_N
from sketch import CANVAS
from synthetic.chair_parts import build_chair
from synthetic.families import families
from synthetic.geometry import (
    apply_affine,
    arc_length,
    bbox,
    hand_polyline,
    hsv,
    random_affine,
    rng_for,
    smooth_noise,
    smooth_warp,
)

SUPERSAMPLE = 2       # photos are drawn at 2x and reduced: anti-aliased edges
MAX_STROKES = 20      # ChairV2 has 1-15 strokes per sketch; extra strokes are the finest ones


# ----------------------------------------------------------------------------- designs
# A design is a flat dict of part types and shape parameters. Each group sampler returns the
# keys of one part of the hierarchy; a family sibling re-samples one or two groups (or single
# keys) of its base design.
def sample_view(rng):
    return dict(kx=rng.uniform(0.3, 0.5), ky=rng.uniform(0.22, 0.4), mirror=bool(rng.random() < 0.5),
                fill=rng.uniform(0.74, 0.86), shift_x=rng.uniform(-6, 6), shift_y=rng.uniform(-6, 6))


def sample_seat(rng):
    return dict(seat_shape=str(rng.choice(['box', 'rounded', 'round'], p=[0.45, 0.35, 0.2])),
                seat_w=rng.uniform(80, 130), seat_d=rng.uniform(55, 90), seat_t=rng.uniform(5, 22),
                seat_h=rng.uniform(55, 100))


def sample_back(rng):
    return dict(back=str(rng.choice(['rectangle', 'rounded', 'arched', 'slatted', 'ladder', 'none'],
                                    p=[0.2, 0.2, 0.18, 0.16, 0.16, 0.1])),
                back_h=rng.uniform(55, 115), back_wf=rng.uniform(0.75, 1.0),
                back_top=rng.uniform(0.82, 1.2), back_tilt=rng.uniform(0, 25),
                back_r=rng.uniform(0.15, 0.45), back_arch=rng.uniform(0.1, 0.3),
                back_t=rng.uniform(4, 10), n_slats=int(rng.integers(3, 7)),
                n_rails=int(rng.integers(2, 5)), post_w=rng.uniform(5, 10),
                crest=rng.uniform(-0.08, 0.15))


def sample_legs(rng):
    return dict(legs=str(rng.choice(['straight', 'tapered', 'splayed', 'curved', 'pedestal'],
                                    p=[0.25, 0.2, 0.2, 0.15, 0.2])),
                leg_w=rng.uniform(3, 10), leg_inset=rng.uniform(0, 10),
                splay=rng.uniform(0.12, 0.35), leg_curve=rng.uniform(0.12, 0.3),
                base_r=rng.uniform(0.35, 0.5), spoke_phase=rng.uniform(0, 2 * math.pi / 5))


def sample_stretcher(rng):
    return dict(stretcher=str(rng.choice(['none', 'h', 'box', 'ring'], p=[0.45, 0.2, 0.2, 0.15])),
                stretch_y=rng.uniform(0.2, 0.45), stretch_w=rng.uniform(2.5, 5))


def sample_arms(rng):
    return dict(arms=str(rng.choice(['none', 'straight', 'curved', 'panel'], p=[0.45, 0.2, 0.15, 0.2])),
                arm_h=rng.uniform(20, 40), arm_w=rng.uniform(4, 9))


def sample_details(rng):
    return dict(seat_cushion=bool(rng.random() < 0.35), back_cushion=bool(rng.random() < 0.3),
                buttons=bool(rng.random() < 0.25), emblem=str(rng.choice(['none', 'circle', 'diamond'],
                                                                          p=[0.75, 0.125, 0.125])),
                studs=bool(rng.random() < 0.2), feet=bool(rng.random() < 0.3),
                castors=bool(rng.random() < 0.8))


def sample_material(rng):
    body = str(rng.choice(['fabric', 'leather', 'plastic', 'wood'], p=[0.4, 0.25, 0.2, 0.15]))
    frame = str(rng.choice(['wood', 'metal', 'plastic'], p=[0.45, 0.4, 0.15]))
    return dict(body_mat=body, frame_mat=frame, body_rgb=material_colour(rng, body).tolist(),
                frame_rgb=material_colour(rng, frame).tolist(),
                accent_rgb=hsv(rng.uniform(0.05, 0.15), rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.8)).tolist())


def material_colour(rng, kind):
    """A plausible RGB colour for a material (metal when no other kind matches)."""
    if kind == 'fabric':
        return hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.85))
    if kind == 'leather':
        return hsv(rng.uniform(0.03, 0.1), rng.uniform(0.2, 0.75), rng.uniform(0.12, 0.75))
    if kind == 'plastic':
        if rng.random() < 0.3:   # white or black plastic
            return hsv(0, 0, rng.choice([0.15, 0.92]))
        return hsv(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.95))
    if kind == 'wood':
        return hsv(rng.uniform(0.06, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.78))
    return hsv(0.6, rng.uniform(0, 0.06), rng.choice([rng.uniform(0.1, 0.25), rng.uniform(0.55, 0.8)]))


CHAIR_GROUPS = {'view': sample_view, 'seat': sample_seat, 'back': sample_back, 'legs': sample_legs,
                'stretcher': sample_stretcher, 'arms': sample_arms, 'details': sample_details,
                'material': sample_material}
# Siblings never differ only by view or colour: those are not what fine-grained retrieval tests.
SHAPE_GROUPS = ('seat', 'back', 'legs', 'stretcher', 'arms', 'details')



def chair_signature(d):
    """What a sketch can see of a design (rounded geometry): equal signatures = same chair."""
    parts = build_chair({**d, 'mirror': False}, silhouette=False)
    return hashlib.sha1(b''.join(np.round(p.points()).astype(np.int16).tobytes() + p.name.encode()
                                 for p in parts)).hexdigest()


# ----------------------------------------------------------------------------- photo
def pixel_grid(size):
    """Row and column index arrays (float32), shared by the texture and lighting code."""
    g = np.arange(size, dtype=np.float32)
    return g[:, None], g[None, :]


def material_texture(rng, kind, size):
    """Multiplicative texture (about 1) of a material on the whole canvas."""
    yy, xx = pixel_grid(size)
    fine = rng.standard_normal((size, size), dtype=np.float32)
    if kind == 'wood':
        a = rng.uniform(0, math.pi)
        u = xx * math.cos(a) + yy * math.sin(a)
        warp = smooth_noise(rng, size, 6) * rng.uniform(8, 20)
        grain = np.sin(2 * math.pi * (u + warp) / rng.uniform(6, 14) * (1 + 0.3 * smooth_noise(rng, size, 4)))
        return 0.9 + 0.1 * grain + 0.02 * fine
    if kind == 'fabric':
        p = rng.uniform(2.2, 3.5)
        weave = np.sin(2 * math.pi * xx / p) * np.sin(2 * math.pi * yy / p)
        return 0.94 + 0.04 * weave + 0.04 * fine + 0.04 * smooth_noise(rng, size, 12)
    if kind == 'leather':
        return 0.96 + 0.05 * smooth_noise(rng, size, 40) + 0.015 * fine
    if kind == 'metal':
        # Brushed: horizontal streaks.
        streak = np.repeat(rng.normal(0, 1, (size, 1)).astype(np.float32), size, 1)
        return 1.0 + 0.03 * streak + 0.03 * smooth_noise(rng, size, 3)
    return 1.0 + 0.01 * fine                                # plastic, rubber, accent


GLOSS = {'plastic': 0.6, 'leather': 0.35, 'metal': 0.8, 'wood': 0.15, 'fabric': 0.0, 'rubber': 0.1}


def face_maps(parts, ids):
    """The faces painted back to front at SUPERSAMPLE: shade in [0, 1] (darker edges and seams)
    and the material id of every pixel (0 = background)."""
    S = CANVAS * SUPERSAMPLE
    shade_img = Image.new('L', (S, S), 0)
    mat_img = Image.new('L', (S, S), 0)
    ds, dm = ImageDraw.Draw(shade_img), ImageDraw.Draw(mat_img)
    for p in parts:
        for poly, m, s in p.faces:
            xy = [tuple(q) for q in np.asarray(poly) * SUPERSAMPLE]
            v = int(np.clip(s, 0, 1) * 255)
            ds.polygon(xy, fill=v, outline=int(v * 0.8))   # slightly darker edges
            dm.polygon(xy, fill=ids[m])
        for seam in p.seams:
            ds.line([tuple(q) for q in seam * SUPERSAMPLE], fill=70, width=SUPERSAMPLE)
    return np.asarray(shade_img, np.float32) / 255, np.asarray(mat_img)


def studio_background(parts, rng):
    """Near-white studio sweep with mild variation and a soft floor shadow under the feet
    (float RGB at SUPERSAMPLE)."""
    S = CANVAS * SUPERSAMPLE
    yy, _ = pixel_grid(S)
    bg = rng.uniform(236, 252) * (1 - 0.04 * yy / S) + 2.5 * smooth_noise(rng, S, 5)
    out = np.repeat(bg[..., None], 3, axis=2) * (1 + rng.uniform(-0.015, 0.015, 3))
    feet = np.array([p.faces[-1][0][-1] for p in parts if p.group == 'legs' and p.faces] or
                    [[CANVAS / 2, CANVAS * 0.85]]) * SUPERSAMPLE
    shadow = Image.new('L', (S, S), 0)
    lo, hi = feet.min(0), feet.max(0)
    ImageDraw.Draw(shadow).ellipse([lo[0] - 10 * SUPERSAMPLE, hi[1] - 8 * SUPERSAMPLE,
                                    hi[0] + 10 * SUPERSAMPLE, hi[1] + 6 * SUPERSAMPLE], fill=255)
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(8 * SUPERSAMPLE)), np.float32) / 255
    return out * (1 - 0.22 * shadow)[..., None]


def render_photo(d, parts, rng):
    """Filled, shaded, coloured and textured product shot (RGB, CANVAS x CANVAS)."""
    S = CANVAS * SUPERSAMPLE
    mats = {'body': (d['body_mat'], d['body_rgb']), 'frame': (d['frame_mat'], d['frame_rgb']),
            'accent': ('metal' if d['studs'] else 'plastic', d['accent_rgb']),
            'rubber': ('rubber', [28, 28, 30])}
    ids = {m: i + 1 for i, m in enumerate(mats)}
    shade, mat = face_maps(parts, ids)
    yy, xx = pixel_grid(S)
    light = 1.08 - 0.16 * (0.6 * xx + 0.4 * yy) / S      # brighter towards the light (upper left)
    out = studio_background(parts, rng)
    for m, (kind, rgb) in mats.items():
        sel = mat == ids[m]
        if not sel.any():
            continue
        lit = (shade * light)[sel]
        spec = GLOSS[kind] * np.clip((lit - 0.85) / 0.2, 0, 1) ** 2 * 120
        out[sel] = np.asarray(rgb, np.float32) * (lit * material_texture(rng, kind, S)[sel])[:, None] + spec[:, None]
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    return img.reduce(SUPERSAMPLE)


def clip_box(b, size):
    """Integer box inside the image with both sides >= BOX_MIN_SIDE (grown around its centre)."""
    x1, y1, x2, y2 = np.floor(b[0]), np.floor(b[1]), np.ceil(b[2]), np.ceil(b[3])
    out = []
    for lo, hi in ((x1, x2), (y1, y2)):
        lo, hi = max(0.0, lo), min(float(size), hi)
        if hi - lo < BOX_MIN_SIDE:
            c = (lo + hi) / 2
            lo = min(max(0.0, math.floor(c - BOX_MIN_SIDE / 2)), size - BOX_MIN_SIDE)
            hi = lo + BOX_MIN_SIDE
        out.append((int(lo), int(hi)))
    return [out[0][0], out[1][0], out[0][1], out[1][1]]


def chair_boxes(parts, rng, size=CANVAS):
    """BOX_TOP_N region proposals standing in for selective search (the QMUL pickle's format):
    the whole image, then the part hierarchy coarse to fine (chair, body, base, backrest, seat,
    legs, arms, detail groups, single parts), then jittered copies / unions of those."""
    def union(ps):
        pts = np.concatenate([p.points() for p in ps])
        return bbox(pts) if len(pts) else None

    groups = [parts,
              [p for p in parts if p.group in ('back', 'seat', 'arms')],
              [p for p in parts if p.group in ('seat', 'legs')],
              [p for p in parts if p.group == 'back'],
              [p for p in parts if p.group == 'seat'],
              [p for p in parts if p.group == 'legs'],
              [p for p in parts if p.group == 'arms'],
              [p for p in parts if p.group == 'details']]
    singles = [[p] for p in parts if p.level >= 1 and p.faces]
    boxes = [[0, 0, size, size]]
    for g in groups + singles:
        b = union(g) if g else None
        if b is None:
            continue
        b = clip_box(b, size)
        if b not in boxes:
            boxes.append(b)
        if len(boxes) == BOX_TOP_N:
            return boxes
    while len(boxes) < BOX_TOP_N:
        i, j = rng.integers(1, len(boxes), 2)
        b = np.array(boxes[i], float)
        if rng.random() < 0.5:
            b = np.concatenate([np.minimum(b[:2], boxes[j][:2]), np.maximum(b[2:], boxes[j][2:])])
        side = np.tile(b[2:] - b[:2], 2)
        b = clip_box(b + rng.uniform(-0.12, 0.12, 4) * side, size)
        if b not in boxes:
            boxes.append(b)
    return boxes


# ----------------------------------------------------------------------------- sketch
def chair_sketch(parts, rng):
    """A free-hand sketch of the chair: float64 (L, 3) x, y, pen (pen = 1 on the last point of
    each stroke), coarse to fine: silhouette, main parts, details."""
    skill = rng.uniform()                                 # careless sketchers omit and wobble more
    step = rng.uniform(7, 14)
    wobble = rng.uniform(0.8, 2.5) * (1.4 - skill)
    jitter = rng.uniform(0.15, 0.45)
    lines = []
    for level in (0, 1, 2):
        ps = [p for p in parts if p.level == level]
        # Mostly the structural order, with a few neighbours swapped.
        order = np.argsort(np.arange(len(ps)) + rng.normal(0, 1.2, len(ps)))
        for p in (ps[i] for i in order):
            if rng.random() < p.omit * (0.5 + 1.2 * (1 - skill)):
                continue
            if p.centre is not None and rng.random() > np.clip((p.width - 3) / 6, 0, 1):
                pl = [(p.centre, False)]                  # thin: one line along the part
            else:
                pl = p.lines
            for pts, closed in pl:
                if level == 0 and rng.random() < 0.35:    # the outline in two strokes
                    s = arc_length(pts)
                    k = int(np.clip(np.searchsorted(s, rng.uniform(0.4, 0.6) * s[-1]), 1, len(pts) - 1))
                    lines += [(pts[:k + 1], False), (np.concatenate([pts[k:], pts[:1]]), False)]
                else:
                    lines.append((pts, closed))
    lines = lines[:MAX_STROKES]
    strokes = []
    centre = np.array([CANVAS / 2, CANVAS / 2])
    for pts, closed in lines:
        q = hand_polyline(pts, rng, step, wobble, jitter, closed)
        # Each stroke is placed a bit off, slightly rotated / scaled about its own centre.
        m = random_affine(rng, 0.04, (0.96, 1.04), 0.03, 2.0)
        strokes.append(apply_affine(m, q, q.mean(0)))
    m = random_affine(rng, 0.12, (0.75, 1.02), 0.12, 14)
    warp = smooth_warp(rng, rng.uniform(3, 9), (150, 400))
    strokes = [warp(apply_affine(m, s, centre)) for s in strokes]
    # Keep the drawing on the canvas: shrink about the centre if the distortion pushed it out.
    lo, hi = np.min([s.min(0) for s in strokes], 0), np.max([s.max(0) for s in strokes], 0)
    f = min(1.0, (CANVAS / 2 - 2) / max(np.abs(lo - centre).max(), np.abs(hi - centre).max()))
    out = []
    for s in strokes:
        s = ((s - centre) * f + centre).clip(0, CANVAS - 1)
        pen = np.zeros((len(s), 1))
        pen[-1] = 1
        out.append(np.concatenate([s, pen], 1))
    return np.concatenate(out).astype(np.float64)


def draw_vector_sketch(points, width=2):
    """Render (L, 3) x, y, pen strokes dark on white, CANVAS square (previews; the loader has its
    own, with boxes)."""
    img = Image.new('RGB', (CANVAS, CANVAS), 'white')
    draw = ImageDraw.Draw(img)
    start = 0
    for e in np.flatnonzero(points[:, 2] == 1):
        xy = [tuple(q) for q in points[start:e + 1, :2]]
        start = e + 1
        if len(xy) > 1:
            draw.line(xy, fill=(0, 0, 0), width=width, joint='curve')
    return img


def generate_chairs(out, seed, size):
    """QMUL layout into `out`; returns the box dict (written next to the folder by the caller)."""
    (out / 'photo').mkdir(parents=True)
    coords, boxes, meta = {}, {}, []
    idx = 0
    for split_id, split in enumerate(('train', 'test')):
        designs = families(rng_for(seed, 0, split_id), size[f'{split}_photos'], CHAIR_GROUPS,
                           SHAPE_GROUPS, chair_signature)
        for family, d in designs:
            name = f'chair{idx:04d}'
            parts = build_chair(d)
            rng = rng_for(seed, 1, idx)
            render_photo(d, parts, rng).save(out / 'photo' / f'{name}.png')
            boxes[f'{name}.png'] = chair_boxes(parts, rng)
            for n in range(1, size['sketches_per_photo'] + 1):
                coords[f'/{split}/{name}_{n}'] = chair_sketch(parts, rng_for(seed, 2, idx, n))
            meta.append({'photo': name, 'split': split, 'family': f'{split}{family}', 'design': d})
            idx += 1
    with open(out / 'Synthetic_Coordinate', 'wb') as f:
        pickle.dump(coords, f, protocol=4)
    with open(out / 'designs.json', 'w') as f:
        json.dump(meta, f, indent=0, sort_keys=True)
    return boxes

