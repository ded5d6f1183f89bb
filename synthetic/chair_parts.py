"""The chair as a hierarchy of parts in an oblique 3/4 view: silhouette (backrest + seat + arms),
main parts (backrest of 6 types, seat of 3 shapes, legs of 5 styles, armrests of 4 types) and
details (stretchers, cushions and seams, tufting buttons, nail-head studs, an emblem, castors,
foot caps). Each `Part` carries the shaded faces the photo paints and the lines a sketcher draws,
so that a photo and its sketches come from the same geometry."""
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sketch import CANVAS
from synthetic.geometry import bezier, ellipse, normals, ribbon, rounded_rect


@dataclass(eq=False)
class Part:
    """One node of the part hierarchy: photo faces, sketch lines and its place in the sketch.

    faces: (polygon (n, 2), material, shade) drawn in list order (painter's algorithm).
    lines: the strokes a sketcher draws for it: (polyline (n, 2), closed).
    centre/width: a thin part may instead be drawn as one line along its centre.
    level: 0 silhouette, 1 main part, 2 detail - the sketch draws levels in this order.
    omit: base probability that a sketcher leaves it out.
    """
    name: str
    group: str
    level: int
    faces: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    seams: list = field(default_factory=list)
    centre: np.ndarray = None
    width: float = 0.0
    omit: float = 0.0

    def points(self):
        """All face and line points (n, 2)."""
        pts = [f[0] for f in self.faces] + [l[0] for l in self.lines]
        return np.concatenate(pts) if pts else np.zeros((0, 2))

    def transform(self, fn, scale):
        """Map every point through fn (a similarity that scales lengths by `scale`)."""
        self.faces = [(fn(p), m, s) for p, m, s in self.faces]
        self.lines = [(fn(p), c) for p, c in self.lines]
        self.seams = [fn(p) for p in self.seams]
        self.centre = None if self.centre is None else fn(self.centre)
        self.width *= scale


# Light from the upper left front; faces are shaded by their normal (Lambert + ambient).
LIGHT = np.array([-0.45, 0.75, -0.5]) / np.linalg.norm([-0.45, 0.75, -0.5])


def lambert(normal):
    """Brightness in [0.42, 1] of a face with this 3D normal under LIGHT."""
    n = np.asarray(normal, float)
    return float(0.42 + 0.58 * max(0.0, n @ LIGHT / (np.linalg.norm(n) + 1e-9)))


class Projector:
    """Oblique 3/4 view: depth (Z, away from the viewer) goes up and to the right."""

    def __init__(self, d):
        self.kx, self.ky = d['kx'], d['ky']

    def __call__(self, p):
        p = np.asarray(p, float)
        return np.stack([p[..., 0] + self.kx * p[..., 2], -(p[..., 1] + self.ky * p[..., 2])], -1)

    def visible(self, nx, nz):
        """Is a vertical face with outward normal (nx, 0, nz) turned to the viewer?"""
        return nx * self.kx - nz > 1e-6


def ribbon_part(name, group, level, centre, widths, mat, shades, omit=0.0):
    """A bar-like part (leg, rail, slat, spoke, arm): lengthwise strips with their own shades
    give a square (2 strips) or round (3-4 strips) cross-section."""
    centre = np.asarray(centre, float)
    w = np.broadcast_to(np.asarray(widths, float), (len(centre),))
    n = normals(centre)
    k = len(shades)
    faces = []
    for i, s in enumerate(shades):
        a, b = -0.5 + i / k, -0.5 + (i + 1) / k
        faces.append((np.concatenate([centre + n * (w * a)[:, None], (centre + n * (w * b)[:, None])[::-1]]),
                      mat, s))
    return Part(name, group, level, faces=faces, lines=[(ribbon(centre, w), True)],
                centre=centre, width=float(w.max()), omit=omit)


def frame_shades(d):
    """Shades of a frame bar's lengthwise strips (see ribbon_part)."""
    # Metal and plastic frames are round tubes (bright middle), wood square (front + side).
    return [0.55, 0.95, 0.7, 0.45] if d['frame_mat'] != 'wood' else [0.85, 0.85, 0.55]


def seat_outline(d, inset=0.0):
    """Seat top outline in the X-Z plane (counter-clockwise seen from above)."""
    w, dep = d['seat_w'] / 2 - inset, d['seat_d'] / 2 - inset
    zc = d['seat_d'] / 2
    if d['seat_shape'] == 'round':
        return ellipse(0, zc, w, dep, 36)
    r = 0.0 if d['seat_shape'] == 'box' else 0.3 * min(w, dep)
    return rounded_rect(-w, zc - dep, w, zc + dep, r, r, 6)


def at_height(outline, y):
    """An X-Z outline (n, 2) lifted to 3D points at height y."""
    return np.stack([outline[:, 0], np.full(len(outline), y), outline[:, 1]], 1)


def prism_faces(proj, outline, y_top, thickness, mat):
    """Faces of a horizontal slab (seat, cushion): the visible side quads, then the top."""
    top = at_height(outline, y_top)
    bot = top - [0, thickness, 0]
    centre = outline.mean(0)
    faces = []
    for i in range(len(outline)):
        j = (i + 1) % len(outline)
        e = outline[j] - outline[i]
        nrm = np.array([e[1], -e[0]])
        if nrm @ ((outline[i] + outline[j]) / 2 - centre) < 0:
            nrm = -nrm
        if proj.visible(nrm[0], nrm[1]):
            faces.append((proj(np.stack([top[i], top[j], bot[j], bot[i]])), mat,
                          lambert([nrm[0], 0, nrm[1]])))
    faces.append((proj(top), mat, lambert([0, 1, 0])))
    return faces


def leg_centrelines(d):
    """3D centrelines (n, 3) of the visible legs, back legs first, plus their names."""
    w, dep, h, t = d['seat_w'] / 2, d['seat_d'], d['seat_h'], d['seat_t']
    ins = d['leg_inset'] + d['leg_w'] / 2
    zc = dep / 2
    if d['seat_shape'] == 'round':
        tops = [((w - ins) * math.cos(a) * 0.8, (dep / 2 - ins) * math.sin(a) * 0.8 + zc)
                for a in (0.75 * math.pi, 0.25 * math.pi, 1.25 * math.pi, 1.75 * math.pi)]
    else:
        tops = [(-(w - ins), dep - ins), (w - ins, dep - ins), (-(w - ins), ins), (w - ins, ins)]
    names = ['leg_back_left', 'leg_back_right', 'leg_front_left', 'leg_front_right']
    out = []
    for x, z in tops:
        top = np.array([x, h - t, z])
        if d['legs'] == 'splayed':
            foot = np.array([x * (1 + d['splay']), 0, zc + (z - zc) * (1 + d['splay'])])
        else:
            foot = np.array([x, 0, z])
        if d['legs'] == 'curved':
            mid = (top + foot) / 2 + np.array([np.sign(x) * d['leg_curve'] * h * 0.5, 0,
                                               np.sign(z - zc) * d['leg_curve'] * h * 0.3])
            out.append(bezier([top, mid, foot], 14))
        else:
            out.append(np.stack([top, foot]))
    return names, out


def point_at_height(line3d, y):
    """The point of a 3D polyline (descending in Y) at height y."""
    ys = line3d[::-1, 1]
    return np.array([np.interp(y, ys, line3d[::-1, k]) for k in range(3)])


def build_legs(d, proj):
    """Four legs (back legs, stretchers, front legs, in painter's order) with optional foot caps,
    or a five-spoke pedestal base with optional castors."""
    parts = []
    shades = frame_shades(d)
    h = d['seat_h']
    if d['legs'] == 'pedestal':
        zc, r = d['seat_d'] / 2, d['base_r'] * d['seat_w']
        hub = np.array([0, 0.12 * h, zc])
        spokes = []
        for k in range(5):
            a = d['spoke_phase'] + k * 2 * math.pi / 5
            end = hub + [r * math.cos(a), -0.12 * h + 5, r * math.sin(a) * 0.9]
            spokes.append((math.sin(a), end))
        spokes.sort(key=lambda s: -s[0])     # far spokes first
        col_w, column_at = max(6.0, d['leg_w'] * 1.4), None
        column = ribbon_part('column', 'legs', 1, proj([[0, h - d['seat_t'], zc], hub]),
                             col_w, 'frame', shades)
        for k, (depth, end) in enumerate(spokes):
            if depth < 0 and column_at is None:           # the column stands in front of far spokes
                column_at = len(parts)
            parts.append(ribbon_part(f'spoke_{k}', 'legs', 1, proj(np.stack([hub, end])),
                                     [d['leg_w'] * 1.2, d['leg_w'] * 0.8], 'frame', shades, omit=0.1))
            if d['castors']:
                c = proj(end - [0, 3, 0])
                parts.append(Part(f'castor_{k}', 'details', 2,
                                  faces=[(ellipse(c[0], c[1], 5, 4.5, 16), 'rubber', 0.6)],
                                  lines=[(ellipse(c[0], c[1], 5, 4.5, 10), True)], omit=0.35))
        parts.insert(len(parts) if column_at is None else column_at, column)
    else:
        names, lines = leg_centrelines(d)
        taper = np.linspace(1, 0.45 if d['legs'] == 'tapered' else 0.9, 14)
        for k, (name, line) in enumerate(zip(names, lines)):
            if k == 2:                                    # painter's order: back legs, stretchers, front legs
                parts += build_stretchers(d, proj, lines)
            c = proj(line)
            w = d['leg_w'] * np.interp(np.linspace(0, 1, len(c)), np.linspace(0, 1, 14), taper)
            parts.append(ribbon_part(name, 'legs', 1, c, w, 'frame', shades,
                                     omit=0.3 if 'back' in name else 0.05))
            if d['feet']:                                 # photo-only detail: too small to sketch
                f = c[-1]
                parts.append(Part(f'foot_{name}', 'details', 2,
                                  faces=[(ellipse(f[0], f[1] - 1.5, w[-1] * 0.8 + 1.5, 3, 12), 'rubber', 0.5)],
                                  lines=[], omit=1.0))
    return parts


def build_stretchers(d, proj, legs):
    """Rails between four legs (`legs`: their 3D centrelines, bl, br, fl, fr): an H, a box or a
    ring."""
    kind = d['stretcher']
    if kind == 'none':
        return []
    y = d['stretch_y'] * d['seat_h']
    p = [point_at_height(l, y) for l in legs]            # bl, br, fl, fr
    sw, shades = d['stretch_w'], frame_shades(d)
    segs = []
    if kind == 'ring':
        c = np.mean(p, 0)
        rx = max(abs(q[0] - c[0]) for q in p) * 1.05
        rz = max(abs(q[2] - c[2]) for q in p) * 1.05
        a = np.linspace(0, 2 * math.pi, 40)
        ring = np.stack([c[0] + rx * np.cos(a), np.full(40, y), c[2] + rz * np.sin(a)], 1)
        return [Part('ring', 'details', 2, faces=[(ribbon(proj(ring), sw), 'frame', 0.8)],
                     lines=[(proj(ring)[:-1], True)], centre=proj(ring), width=sw, omit=0.3)]
    if kind == 'h':
        segs = [('stretch_left', p[0], p[2]), ('stretch_right', p[1], p[3]),
                ('stretch_mid', (p[0] + p[2]) / 2, (p[1] + p[3]) / 2)]
    elif kind == 'box':
        segs = [('stretch_back', p[0], p[1]), ('stretch_left', p[0], p[2]),
                ('stretch_right', p[1], p[3]), ('stretch_front', p[2], p[3])]
    return [ribbon_part(n, 'details', 2, proj(np.stack([a, b])), sw, 'frame', shades[:2], omit=0.3)
            for n, a, b in segs]


def back_base(d):
    """Half-width of the backrest at the seat and the depth of its front face: at the back edge
    of the seat, narrower and further in on a round seat so that it stands on the seat."""
    bw = d['back_wf'] * d['seat_w'] / 2
    if d['seat_shape'] != 'round':
        return bw, d['seat_d'] - d['back_t']
    bw = min(bw, 0.7 * d['seat_w'] / 2)
    return bw, d['seat_d'] / 2 * (1 + math.sqrt(1 - (bw / (d['seat_w'] / 2)) ** 2)) - d['back_t']


def back_to_3d(d, pts2d, offset=0.0):
    """Backrest-plane points (x across, y up from the seat) to 3D, leaning back by the tilt."""
    pts2d = np.asarray(pts2d, float)
    z = back_base(d)[1] + offset + d['back_tilt'] * pts2d[:, 1] / d['back_h']
    return np.stack([pts2d[:, 0], d['seat_h'] + pts2d[:, 1], z], 1)


SOLID_BACKS = ('rectangle', 'rounded', 'arched')


def panel_outline(d, bw, tw, bh):
    """A solid backrest's outline in its plane (x across, y up from the seat): half-widths bw at
    the seat and tw at the top, height bh."""
    if d['back'] == 'rectangle':
        return np.array([[-bw, 0], [bw, 0], [tw, bh], [-tw, bh]])
    if d['back'] == 'rounded':
        o = rounded_rect(-bw, 0, bw, bh, d['back_r'] * 2 * bw, 0, 8)
        o[:, 0] *= np.interp(o[:, 1], [0, bh], [1, tw / bw])
        return o
    sh = bh * (1 - d['back_arch'])
    arch = bezier([[tw, sh], [tw, bh * 1.02], [-tw, bh * 1.02], [-tw, sh]], 20)
    return np.concatenate([[[-bw, 0], [bw, 0]], arch])


def open_back_pieces(d, bw, tw, bh):
    """Posts, top rail and slats or rails of an open backrest, in its plane:
    (name, level, outline, centre line, width) each."""
    pw = d['post_w']
    crest = d['crest'] * bh
    pieces = []
    for sx in (-1, 1):
        c = np.array([[sx * (bw - pw / 2), 0], [sx * (tw - pw / 2), bh]])
        pieces.append((f'back_post_{"left" if sx < 0 else "right"}', 1, ribbon(c, pw), c, pw))
    top = bezier([[-tw + pw / 2, bh - pw], [0, bh - pw + 2 * crest], [tw - pw / 2, bh - pw]], 12)
    pieces.append(('back_top_rail', 1, ribbon(top, pw * 1.6), top, pw * 1.6))
    if d['back'] == 'slatted':
        low = 0.18 * bh
        bottom = np.array([[-bw + pw / 2, low], [bw - pw / 2, low]])
        pieces.append(('back_low_rail', 2, ribbon(bottom, pw), bottom, pw))
        n = d['n_slats']
        for k in range(n):
            f = (k + 1) / (n + 1)
            x0 = -bw + pw + f * (2 * bw - 2 * pw)
            x1 = -tw + pw + f * (2 * tw - 2 * pw)
            yt = np.interp(x1, top[:, 0], top[:, 1])
            c = np.array([[x0, low], [x1, yt]])
            pieces.append((f'back_slat_{k}', 2, ribbon(c, pw * 0.7), c, pw * 0.7))
    else:
        n = d['n_rails']
        for k in range(n):
            y = bh * (0.2 + 0.55 * k / max(1, n - 1)) if n > 1 else 0.5 * bh
            xw = np.interp(y, [0, bh], [bw, tw]) - pw / 2
            c = np.array([[-xw, y], [xw, y]])
            pieces.append((f'back_rail_{k}', 2, ribbon(c, pw * 0.9), c, pw * 0.9))
    return pieces


def back_details(d, proj, panel, bw, bh, shade):
    """The backrest's details: cushion and tufting buttons (solid panel only), an emblem."""
    parts = []
    cx, cy = 0.0, bh * 0.55
    if panel is not None and d['back_cushion']:
        inner = (panel - [0, bh * 0.5]) * [0.8, 0.78] + [0, bh * 0.5]
        seam = proj(back_to_3d(d, inner, -1.5))
        parts.append(Part('back_cushion', 'details', 2, faces=[(seam, 'body', min(1.0, shade * 1.08))],
                          lines=[(seam, True)], seams=[seam], omit=0.25))
    if panel is not None and d['buttons']:
        for i, (bx, by) in enumerate([(x, y) for y in (0.42, 0.68) for x in (-0.35, 0, 0.35)]):
            q = proj(back_to_3d(d, [[bx * bw, by * bh]], -2))[0]
            parts.append(Part(f'button_{i}', 'details', 2,
                              faces=[(ellipse(q[0], q[1], 2.2, 2.2, 10), 'accent', 0.5)],
                              lines=[(ellipse(q[0], q[1], 2.0, 2.0, 6), True)], omit=0.35))
    if d['emblem'] != 'none':
        r = 0.14 * min(bw, bh)
        o = (ellipse(cx, cy, r, r, 20) if d['emblem'] == 'circle'
             else np.array([[cx, cy - r * 1.3], [cx + r, cy], [cx, cy + r * 1.3], [cx - r, cy]]))
        q = proj(back_to_3d(d, o, -2.5))
        parts.append(Part('emblem', 'details', 2, faces=[(q, 'accent', 0.8)], lines=[(q, True)], omit=0.2))
    return parts


def build_back(d, proj):
    """Backrest pieces: one solid panel, or posts + rails / slats (open backs); then its details."""
    if d['back'] == 'none':
        return []
    bw, bh = back_base(d)[0], d['back_h']
    tw = bw * d['back_top']
    shade = lambert([0, d['back_tilt'], -d['back_h']])   # normal of the leaning backrest
    panel = panel_outline(d, bw, tw, bh) if d['back'] in SOLID_BACKS else None
    pieces = [('back_panel', 1, panel, None, 0)] if panel is not None else open_back_pieces(d, bw, tw, bh)
    parts = []
    for name, level, o, c, w in pieces:
        faces = [(proj(back_to_3d(d, o, d['back_t'])), 'body' if c is None else 'frame', shade * 0.62),
                 (proj(back_to_3d(d, o)), 'body' if c is None else 'frame', shade)]
        centre = None if c is None else proj(back_to_3d(d, c))
        # The solid panel's outline is the silhouette (level 0): no separate stroke for it.
        parts.append(Part(name, 'back', level, faces=faces,
                          lines=[] if c is None else [(faces[1][0], True)],
                          centre=centre, width=w, omit=0.05 if level == 1 else 0.3))
    return parts + back_details(d, proj, panel, bw, bh, shade)


def build_seat(d, proj):
    """The seat slab, with an optional cushion and a row of nail-head studs."""
    o = seat_outline(d)
    h = d['seat_h']
    faces = prism_faces(proj, o, h, d['seat_t'], 'body')
    top = proj(at_height(o, h))
    parts = [Part('seat', 'seat', 1, faces=faces, lines=[(top, True)], omit=0.03)]
    if d['seat_cushion']:
        ci = seat_outline(d, inset=0.1 * min(d['seat_w'], d['seat_d']))
        cf = prism_faces(proj, ci, h + 5, 5, 'body')
        ctop = proj(at_height(ci, h + 5))
        parts.append(Part('seat_cushion', 'details', 2, faces=cf, lines=[(ctop, True)],
                          seams=[ctop], omit=0.25))
    if d['studs']:
        # Nail-head trim along the front edge; a sketcher draws it as one curly line.
        zc = d['seat_d'] / 2
        if d['seat_shape'] == 'round':
            a = np.linspace(0.1 * math.pi, 0.9 * math.pi, 9)
            edge = np.stack([0.97 * d['seat_w'] / 2 * np.cos(a), -0.97 * zc * np.sin(a) + zc], 1)[::-1]
        else:
            x = np.linspace(-0.42, 0.42, 9) * d['seat_w']
            edge = np.stack([x, np.full(9, 0.0)], 1)
        q = proj(at_height(edge, h - d['seat_t'] * 0.5))
        r = max(1.2, min(2.5, d['seat_t'] * 0.18))
        faces = [(ellipse(p[0], p[1], r, r, 8), 'accent', 0.9) for p in q]
        curl = np.concatenate([ellipse(p[0], p[1] - r, r * 1.2, r * 1.2, 6, math.pi / 2, 2.5 * math.pi)
                               for p in q])
        parts.append(Part('studs', 'details', 2, faces=faces, lines=[(curl, False)], omit=0.3))
    return parts


def build_arms(d, proj):
    """Two armrests, far one first: a straight bar on a post, a curved bar, or a solid side panel."""
    kind = d['arms']
    if kind == 'none' or d['back'] == 'none':           # a stool has no arms
        return []
    w, dep, h = d['seat_w'] / 2, d['seat_d'], d['seat_h']
    ah, aw = d['arm_h'], d['arm_w']
    bw, zb = back_base(d) if d['back'] != 'none' else (w, dep - d['back_t'])
    shades = frame_shades(d)
    parts = []
    for side in (-1, 1):                                  # far arm first
        x = side * (w - aw / 2 if kind == 'panel' else bw if d['seat_shape'] == 'round' else max(bw, w * 0.9))
        name = f'arm_{"left" if side < 0 else "right"}'
        if kind == 'straight':
            bar = proj([[x, h + ah, zb], [x, h + ah, 0.12 * dep]])
            post = proj([[x, h + ah, 0.2 * dep], [x, h, 0.2 * dep]])
            parts.append(ribbon_part(name, 'arms', 1, bar, aw, 'frame', shades[:2]))
            parts.append(ribbon_part(name + '_post', 'arms', 1, post, aw * 0.8, 'frame', shades, omit=0.1))
        elif kind == 'curved':
            c = bezier([[x, h + ah * 1.15, zb], [x, h + ah * 1.3, 0.2 * dep],
                        [x, h + ah * 0.6, -0.05 * dep], [x, h, 0.12 * dep]], 18)
            parts.append(ribbon_part(name, 'arms', 1, proj(c), aw, 'frame', shades))
        else:
            # A solid side panel (armchair / sofa), its top edge rounded at the front.
            prof = np.concatenate([[[dep - d['back_t'], -d['seat_t']]],
                                   [[dep - d['back_t'], ah]],
                                   ellipse(0.1 * dep + ah * 0.3, ah - ah * 0.3, ah * 0.3, ah * 0.3, 8,
                                           0.5 * math.pi, math.pi),
                                   [[0.0, -d['seat_t']]]])
            side_pts = np.stack([np.full(len(prof), x + aw / 2), h + prof[:, 1], prof[:, 0]], 1)
            front = np.array([[x - aw / 2, h - d['seat_t'], 0], [x + aw / 2, h - d['seat_t'], 0],
                              [x + aw / 2, h + ah * 0.7, 0], [x - aw / 2, h + ah * 0.7, 0]])
            top = np.array([[x - aw / 2, h + ah, dep - d['back_t']], [x + aw / 2, h + ah, dep - d['back_t']],
                            [x + aw / 2, h + ah, 0.3 * dep], [x - aw / 2, h + ah, 0.3 * dep]])
            faces = [(proj(side_pts), 'body', lambert([1, 0, 0])), (proj(top), 'body', lambert([0, 1, 0])),
                     (proj(front), 'body', lambert([0, 0, -1]))]
            parts.append(Part(name, 'arms', 1, faces=faces, lines=[(proj(side_pts), True)], omit=0.05))
    return parts


def silhouette_part(parts):
    """The first stroke: the outer contour of the chair body (backrest, seat, arms)."""
    mask = Image.new('L', (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    body = [p for p in parts if p.group in ('back', 'seat', 'arms')]
    for p in body:
        for poly, _, _ in p.faces:
            draw.polygon([tuple(q) for q in poly], fill=255)
    mask = mask.filter(ImageFilter.MaxFilter(3))           # bridge 1-px gaps between pieces
    contours, _ = cv2.findContours(np.asarray(mask).copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    c = cv2.approxPolyDP(c, 1.0, True)[:, 0].astype(float)
    return Part('silhouette', 'body', 0, lines=[(c, True)])


def build_chair(d, silhouette=True):
    """All parts of a design, in painter's order, fitted into the 256 canvas (the silhouette
    stroke first)."""
    if d['back'] == 'none':
        # A stool: a smaller, thicker, rounded seat on taller legs (else it reads as a table).
        d = {**d, 'seat_w': d['seat_w'] * 0.7, 'seat_d': d['seat_d'] * 0.75, 'seat_h': d['seat_h'] * 1.4,
             'seat_t': d['seat_t'] * 1.4, 'seat_shape': 'rounded' if d['seat_shape'] == 'box' else d['seat_shape']}
    proj = Projector(d)
    parts = build_legs(d, proj) + build_back(d, proj) + build_seat(d, proj) + build_arms(d, proj)
    # Fit: mirror for the other 3/4 view, scale the chair to `fill` of the canvas, centre it.
    pts = np.concatenate([p.points() for p in parts])
    if d['mirror']:
        pts = pts * [-1, 1]
    lo, hi = pts.min(0), pts.max(0)
    s = d['fill'] * CANVAS / max(hi - lo)
    off = np.array([CANVAS / 2 + d['shift_x'], CANVAS / 2 + d['shift_y']]) - s * (lo + hi) / 2
    sign = np.array([-1.0 if d['mirror'] else 1.0, 1.0])
    for p in parts:
        p.transform(lambda q: np.asarray(q) * sign * s + off, s)
    return [silhouette_part(parts)] + parts if silhouette else parts

