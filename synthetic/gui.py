"""The `SyntheticGUI` dataset (SWIRE layout with RICO trees), written by `generate_gui`: per
screen a RICO JSON tree (gui_tree.py), a rendered screenshot and hand-drawn-style wireframe
sketches (white ink on black JPEG, as SWIRE).

`KINDS` is the one table of GUI element kinds: for every `kind` the tree builders emit, how it is
painted on the screenshot and how a designer sketches it, side by side below."""
import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from synthetic.families import families
from synthetic.geometry import (
    apply_affine,
    ellipse,
    hand_polyline,
    hsv,
    random_affine,
    rng_for,
    rounded_rect,
    smooth_warp,
)
from synthetic.gui_tree import (
    GUI_GROUPS,
    GUI_SHAPE_GROUPS,
    H_GUI,
    STATUS_H,
    W_GUI,
    build_screen,
    gui_signature,
    rico_json,
    walk,
)

SCREEN_SIZE = (360, 640)   # screenshot, 9:16 like RICO's 1080x1920
GUI_SKETCH_SIZE = (288, 512)
JPEG_QUALITY = 90
INK, GREY = (40, 40, 44), (150, 150, 155)


class Screen:
    """A screenshot being painted: the image and its pen, the scale from the RICO frame, the
    theme's colours and the screen's random stream (word lengths, pictures, checkboxes)."""

    def __init__(self, d, rng):
        W, H = SCREEN_SIZE
        self.s = W / W_GUI
        self.img = Image.new('RGB', (W, H), tuple(int(v) for v in d['bg']))
        self.draw = ImageDraw.Draw(self.img)
        self.rng = rng
        self.primary = tuple(int(v) for v in d['primary'])
        self.dark = tuple(int(v * 0.75) for v in d['primary'])
        self.accent = tuple(int(v) for v in d['accent'])

    def sc(self, b):
        """A RICO-frame box in screenshot pixels."""
        s = self.s
        return [b[0] * s, b[1] * s, b[2] * s, b[3] * s]

    def words(self, box, lines, colour, weight):
        """Text as rounded word bars, the last line shorter."""
        x0, y0, x1, y1 = self.sc(box)
        lh = (y1 - y0) / lines
        bar = lh * (0.7 if weight == 'title' else 0.5)
        for i in range(lines):
            x, yc = x0, y0 + lh * (i + 0.5)
            end = x1 if i < lines - 1 else x0 + (x1 - x0) * self.rng.uniform(0.5, 1.0)
            while x < end - 4:
                wl = min(end - x, self.rng.uniform(3, 9) * bar)
                self.draw.rounded_rectangle([x, yc - bar / 2, x + wl, yc + bar / 2], radius=bar / 3, fill=colour)
                x += wl + bar * 0.6

    def picture(self, box, round_):
        """A landscape (sky, sun, hills), clipped to a circle for avatars."""
        rng = self.rng
        x0, y0, x1, y1 = [int(v) for v in self.sc(box)]
        w, h = max(1, x1 - x0), max(1, y1 - y0)
        sky = hsv(rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.6, 0.95))
        ground = hsv(rng.uniform(), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
        yy = np.linspace(0, 1, h)[:, None, None]
        arr = np.broadcast_to(sky * (1 - 0.3 * yy), (h, w, 3)).copy()
        pic = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        pd = ImageDraw.Draw(pic)
        pd.ellipse([w * 0.65, h * 0.15, w * 0.8, h * 0.15 + w * 0.15], fill=(250, 240, 200))
        pd.polygon([(0, h), (w * rng.uniform(0.2, 0.5), h * rng.uniform(0.3, 0.6)), (w * 0.7, h * 0.8),
                    (w, h * rng.uniform(0.4, 0.7)), (w, h)], fill=tuple(int(v) for v in ground))
        mask = Image.new('L', (w, h), 255)
        if round_:
            mask = Image.new('L', (w, h), 0)
            ImageDraw.Draw(mask).ellipse([0, 0, w - 1, h - 1], fill=255)
        self.img.paste(pic, (x0, y0), mask)

    def icon(self, box, shape, colour):
        """A material-style glyph: menu, arrow, search, dots, chevron, checkbox, star, square or
        (anything else) a circle."""
        draw = self.draw
        x0, y0, x1, y1 = self.sc(box)
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * 0.8
        if shape == 'menu':
            for k in (-1, 0, 1):
                draw.rectangle([cx - r, cy + k * r * 0.6 - 1, cx + r, cy + k * r * 0.6 + 1], fill=colour)
        elif shape == 'arrow':
            draw.line([(cx + r, cy), (cx - r, cy)], fill=colour, width=2)
            draw.line([(cx - r * 0.3, cy - r * 0.7), (cx - r, cy), (cx - r * 0.3, cy + r * 0.7)], fill=colour, width=2)
        elif shape == 'search':
            draw.ellipse([cx - r, cy - r, cx + r * 0.3, cy + r * 0.3], outline=colour, width=2)
            draw.line([(cx + r * 0.1, cy + r * 0.1), (cx + r, cy + r)], fill=colour, width=2)
        elif shape == 'dots':
            for k in (-1, 0, 1):
                draw.ellipse([cx - 1.5, cy + k * r * 0.6 - 1.5, cx + 1.5, cy + k * r * 0.6 + 1.5], fill=colour)
        elif shape == 'chevron':
            draw.line([(cx - r * 0.3, cy - r * 0.6), (cx + r * 0.3, cy), (cx - r * 0.3, cy + r * 0.6)],
                      fill=colour, width=2)
        elif shape == 'checkbox':
            on = self.rng.random() < 0.5
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], outline=self.accent if on else GREY, width=2,
                           fill=self.accent if on else None)
            if on:
                draw.line([(cx - r * 0.5, cy), (cx - r * 0.1, cy + r * 0.4), (cx + r * 0.6, cy - r * 0.5)],
                          fill='white', width=2)
        elif shape == 'star':
            a = np.linspace(-math.pi / 2, 1.5 * math.pi, 11)[:-1]
            rr = np.where(np.arange(10) % 2, r * 0.45, r)
            draw.polygon([(cx + q * math.cos(t), cy + q * math.sin(t)) for q, t in zip(rr, a)], fill=colour)
        elif shape == 'square':
            draw.rounded_rectangle([cx - r, cy - r, cx + r, cy + r], radius=r * 0.3, fill=colour)
        else:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)

    def status_bar(self):
        """The phone's status bar (outside the app's view tree, as in RICO screenshots)."""
        W = SCREEN_SIZE[0]
        self.draw.rectangle([0, 0, W, STATUS_H * self.s], fill=self.dark)
        self.words([60, 30, 200, 66], 1, (235, 235, 235), 'body')
        for k in range(3):
            self.draw.rectangle([W - 20 - k * 14, 8, W - 11 - k * 14, STATUS_H * self.s - 8], fill=(235, 235, 235))


# ----------------------------------------------------------------------------- sketch strokes
def rect_lines(b, rng, loop_p=0.5):
    """A box as a designer draws it: one loop, or four lines overshooting at the corners."""
    x0, y0, x1, y1 = b
    if rng.random() < loop_p:
        return [(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float), True)]
    o = lambda: rng.uniform(-10, 25)
    return [(np.array([[x0 - o(), y0], [x1 + o(), y0]]), False), (np.array([[x1, y0 - o()], [x1, y1 + o()]]), False),
            (np.array([[x1 + o(), y1], [x0 - o(), y1]]), False), (np.array([[x0, y1 + o()], [x0, y0 - o()]]), False)]


def squiggle(x0, x1, y, amp, rng):
    """Text as a wavy line (or a straight one)."""
    n = max(2, int((x1 - x0) / 8))
    xs = np.linspace(x0, x1, n)
    if rng.random() < 0.35:
        return np.stack([xs, np.full(n, y)], 1)
    period = rng.uniform(70, 120)
    return np.stack([xs, y + amp * np.sin(2 * math.pi * (xs - x0) / period)], 1)


# ----------------------------------------------------------------------------- kinds
# paint(screen, node) draws the node on the screenshot; sketch(node, rng, p_omit) returns the
# polylines (RICO frame, closed or not) a designer draws for it, p_omit: how careless they are.
def paint_nothing(c, n):
    """Containers ('group') are invisible: their children are painted."""


def sketch_nothing(n, rng, p_omit):
    """Containers are not drawn: their children are."""
    return []


def paint_bar(c, n):
    st, b = n['_style'], n['bounds']
    c.draw.rectangle(c.sc(b), fill=c.primary if st['fill'] == 'primary' else (255, 255, 255))
    if st['fill'] == 'white':
        c.draw.line([(0, b[1] * c.s), (SCREEN_SIZE[0], b[1] * c.s)], fill=(210, 210, 210), width=1)


def sketch_bar(n, rng, p_omit):
    return rect_lines(n['bounds'], rng, 0.3)


def paint_tab(c, n):
    b = n['bounds']
    if n['_style']['selected']:
        c.draw.rectangle([b[0] * c.s, b[3] * c.s - 3, b[2] * c.s, b[3] * c.s], fill=c.accent)


def sketch_tab(n, rng, p_omit):
    x0, y0, x1, y1 = n['bounds']
    return [(np.array([[x0, y1 - 10], [x1, y1 - 10]], float), False)] if n['_style']['selected'] else []


TEXT_COLOURS = {'title': INK, 'body': INK, 'caption': (110, 110, 115), 'hint': (175, 175, 180)}


def paint_text(c, n):
    st = n['_style']
    colour = TEXT_COLOURS[st['weight']]
    if st['on_colour']:
        colour = (250, 250, 250) if st['weight'] == 'title' else (225, 225, 230)
    c.words(n['bounds'], st['lines'], colour, st['weight'])


def sketch_text(n, rng, p_omit):
    st = n['_style']
    x0, y0, x1, y1 = n['bounds']
    if rng.random() < p_omit:
        return []
    lh = (y1 - y0) / st['lines']
    return [(squiggle(x0, x1 if i < st['lines'] - 1 else x0 + (x1 - x0) * rng.uniform(0.5, 1), y0 + lh * (i + 0.5),
                      min(22, lh * 0.25), rng), False) for i in range(min(st['lines'], 3))]


def paint_image(c, n):
    c.picture(n['bounds'], n['_style']['round'])


def sketch_image(n, rng, p_omit):
    """A crossed box, or a circle with one diagonal for a round picture."""
    x0, y0, x1, y1 = b = n['bounds']
    if n['_style']['round']:
        c = ellipse((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, 24)
        return [(c, True), (np.array([[x0 + 0.15 * (x1 - x0), y0 + 0.15 * (y1 - y0)],
                                      [x1 - 0.15 * (x1 - x0), y1 - 0.15 * (y1 - y0)]]), False)]
    return rect_lines(b, rng) + [(np.array([[x0, y0], [x1, y1]], float), False),
                                 (np.array([[x1, y0], [x0, y1]], float), False)]


def paint_icon(c, n):
    st = n['_style']
    colour = (250, 250, 250) if st['on_colour'] else (95, 95, 100) if st['shape'] != 'star' else c.accent
    c.icon(n['bounds'], st['shape'], colour)


def sketch_icon(n, rng, p_omit):
    """Three bars, a chevron, a box or a circle, by the icon's shape."""
    shape = n['_style']['shape']
    x0, y0, x1, y1 = n['bounds']
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if rng.random() < p_omit:
        return []
    if shape in ('menu', 'dots'):
        return [(np.array([[cx - r, cy + k * r * 0.6], [cx + r, cy + k * r * 0.6]]), False) for k in (-1, 0, 1)]
    if shape in ('arrow', 'chevron'):
        return [(np.array([[cx + r * 0.3, cy - r * 0.7], [cx - r * 0.4, cy], [cx + r * 0.3, cy + r * 0.7]]), False)]
    if shape in ('square', 'checkbox'):
        return [(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float), True)]
    return [(ellipse(cx, cy, r, r, 16), True)]


def paint_button(c, n):
    st, b = n['_style'], n['bounds']
    r = (b[3] - b[1]) * c.s * 0.15
    if st['filled']:
        c.draw.rounded_rectangle(c.sc(b), radius=r, fill=c.accent)
    else:
        c.draw.rounded_rectangle(c.sc(b), radius=r, outline=c.accent, width=2)
    x0, y0, x1, y1 = c.sc(b)
    cx, cy, hw = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * st['length'] / 2
    c.draw.rounded_rectangle([cx - hw, cy - 3, cx + hw, cy + 3], radius=2,
                             fill=(255, 255, 255) if st['filled'] else c.accent)


def sketch_button(n, rng, p_omit):
    x0, y0, x1, y1 = b = n['bounds']
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw = (x1 - x0) * n['_style']['length'] / 2
    return rect_lines(b, rng, 0.6) + [(squiggle(cx - hw, cx + hw, cy, 12, rng), False)]


def paint_input(c, n):
    b = n['bounds']
    if n['_style']['outlined']:
        c.draw.rounded_rectangle(c.sc(b), radius=6, outline=GREY, width=1, fill=(255, 255, 255))
    else:
        c.draw.line([(b[0] * c.s, b[3] * c.s - 2), (b[2] * c.s, b[3] * c.s - 2)], fill=GREY, width=2)


def sketch_input(n, rng, p_omit):
    x0, y0, x1, y1 = b = n['bounds']
    if n['_style']['outlined']:
        return rect_lines(b, rng, 0.6)
    return [(np.array([[x0, y1], [x1, y1]], float), False)]


def paint_switch(c, n):
    on = n['_style']['on']
    x0, y0, x1, y1 = c.sc(n['bounds'])
    r = (y1 - y0) / 2
    c.draw.rounded_rectangle([x0, y0 + r * 0.4, x1, y1 - r * 0.4], radius=r * 0.6,
                             fill=c.accent if on else (190, 190, 195))
    cx = x1 - r if on else x0 + r
    c.draw.ellipse([cx - r, y0, cx + r, y1], fill=(250, 250, 250), outline=(170, 170, 170))


def sketch_switch(n, rng, p_omit):
    x0, y0, x1, y1 = n['bounds']
    return [(rounded_rect(x0, y0, x1, y1, (y1 - y0) / 2, (y1 - y0) / 2, 6), True)]


def paint_card(c, n):
    x0, y0, x1, y1 = c.sc(n['bounds'])
    c.draw.rounded_rectangle([x0 + 1, y0 + 2, x1 + 1, y1 + 2], radius=4, fill=(200, 200, 205))
    c.draw.rounded_rectangle([x0, y0, x1, y1], radius=4, fill=(255, 255, 255))


def sketch_card(n, rng, p_omit):
    return rect_lines(n['bounds'], rng, 0.6)


def paint_item(c, n):
    b = n['bounds']
    if n['_style']['divider']:
        c.draw.line([(b[0] * c.s + 16, b[3] * c.s - 1), (b[2] * c.s, b[3] * c.s - 1)], fill=(215, 215, 220), width=1)


def sketch_item(n, rng, p_omit):
    """A list row's own stroke is its divider, the detail most often forgotten: a row-level skip
    (at half the omission rate) comes on top of the usual omission."""
    x0, y0, x1, y1 = n['bounds']
    if rng.random() < p_omit * 0.5:
        return []
    if n['_style']['divider'] and rng.random() > p_omit:
        return [(np.array([[x0 + 40, y1], [x1 - 20, y1]], float), False)]
    return []


def paint_fab(c, n):
    x0, y0, x1, y1 = c.sc(n['bounds'])
    c.draw.ellipse([x0 + 1, y0 + 3, x1 + 1, y1 + 3], fill=(170, 170, 175))
    c.draw.ellipse([x0, y0, x1, y1], fill=c.accent)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * 0.2
    c.draw.line([(cx - r, cy), (cx + r, cy)], fill='white', width=3)
    c.draw.line([(cx, cy - r), (cx, cy + r)], fill='white', width=3)


def sketch_fab(n, rng, p_omit):
    x0, y0, x1, y1 = n['bounds']
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [(ellipse(cx, cy, r, r, 20), True), (np.array([[cx - r / 2, cy], [cx + r / 2, cy]]), False),
            (np.array([[cx, cy - r / 2], [cx, cy + r / 2]]), False)]


@dataclass(frozen=True)
class Kind:
    """How one kind of GUI element is painted on the screenshot and drawn in a sketch."""
    paint: Callable
    sketch: Callable


KINDS = {
    'group': Kind(paint_nothing, sketch_nothing),
    'bar': Kind(paint_bar, sketch_bar),
    'tab': Kind(paint_tab, sketch_tab),
    'text': Kind(paint_text, sketch_text),
    'image': Kind(paint_image, sketch_image),
    'icon': Kind(paint_icon, sketch_icon),
    'button': Kind(paint_button, sketch_button),
    'input': Kind(paint_input, sketch_input),
    'switch': Kind(paint_switch, sketch_switch),
    'card': Kind(paint_card, sketch_card),
    'item': Kind(paint_item, sketch_item),
    'fab': Kind(paint_fab, sketch_fab),
}


# ----------------------------------------------------------------------------- screen, sketch, files
def render_screenshot(d, tree, rng):
    """The screen as a phone shows it: coloured bars, text-like word bars, pictures, icons."""
    c = Screen(d, rng)
    c.status_bar()
    for n in walk(tree):
        KINDS[n['_style']['kind']].paint(c, n)
    return c.img


def gui_sketch(tree, rng):
    """A hand-drawn wireframe of the screen: white ink on black (as SWIRE), GUI_SKETCH_SIZE."""
    skill = rng.uniform()
    p_omit = 0.05 + 0.25 * (1 - skill)
    lines = []
    if rng.random() < 0.6:                               # the phone's screen outline
        lines += rect_lines([0, 0, W_GUI, H_GUI], rng, 0.7)
    for n in walk(tree):
        lines += KINDS[n['_style']['kind']].sketch(n, rng, p_omit)
    step, wobble, jitter = rng.uniform(15, 25), rng.uniform(6, 16), rng.uniform(1, 2.5)
    m = random_affine(rng, 0.04, (0.9, 1.0), 0.03, 50)
    warp = smooth_warp(rng, rng.uniform(10, 30), (1500, 4000))
    centre = np.array([W_GUI / 2, H_GUI / 2])
    W, H = GUI_SKETCH_SIZE
    img = Image.new('L', (W, H), 0)
    draw = ImageDraw.Draw(img)
    width = int(rng.integers(2, 4))
    for pts, closed in lines:
        q = hand_polyline(pts, rng, step, wobble, jitter, closed, period=(300, 900))
        q = warp(apply_affine(m, q, centre)) * [W / W_GUI, H / H_GUI]
        draw.line([tuple(p) for p in q], fill=255, width=width, joint='curve')
    return img.convert('RGB')


def generate_gui(out, seed, size):
    """SWIRE layout into `out`: sketches/<id>_<n>.jpg, combined/<id>.jpg + <id>.json."""
    (out / 'sketches').mkdir(parents=True)
    (out / 'combined').mkdir(parents=True)
    meta = []
    designs = families(rng_for(seed, 10, 0), size['screens'], GUI_GROUPS, GUI_SHAPE_GROUPS, gui_signature)
    for i, (family, d) in enumerate(designs):
        rico_id = f'{100000 + i}'
        tree = build_screen(d)
        render_screenshot(d, tree, rng_for(seed, 11, i)).save(out / 'combined' / f'{rico_id}.jpg',
                                                               quality=JPEG_QUALITY)
        with open(out / 'combined' / f'{rico_id}.json', 'w') as f:
            json.dump(rico_json(tree), f, indent=2)
        for n in range(1, size['sketches_per_screen'] + 1):
            gui_sketch(tree, rng_for(seed, 12, i, n)).save(out / 'sketches' / f'{rico_id}_{n}.jpg',
                                                           quality=JPEG_QUALITY)
        meta.append({'rico_id': rico_id, 'family': family, 'design': d})
    with open(out / 'designs.json', 'w') as f:
        json.dump(meta, f, indent=0, sort_keys=True)
    return None   # no box pickle: a screen's boxes are its RICO tree

