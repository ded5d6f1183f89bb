"""App screen designs and their RICO semantic-annotation trees (the `SyntheticGUI` dataset).

A screen is a toolbar, optional tabs and search bar, one content type (list, incl. settings rows
with switches / card grid / form / detail), an optional FAB and bottom navigation. Every node
has RICO's `class`, `bounds` (in the RICO_FRAME), `componentLabel` and `children`; containers
without a RICO label are 'Layout', the root 'Root'. `_style` holds what the painter and the
sketcher of the node's `kind` need (gui.KINDS); it is not written to the JSON."""
import hashlib
import json

from layouts import RICO_FRAME
from synthetic.geometry import hsv

W_GUI, H_GUI = RICO_FRAME
STATUS_H = 96         # the status bar above the app's view tree


# ----------------------------------------------------------------------------- designs
# Each group sampler returns the keys of one part of the screen (families.py); a sibling re-samples
# one or two layout groups and keeps the theme.
def sample_theme(rng):
    hue = rng.uniform()
    return dict(primary=hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.45, 0.85)).tolist(),
                accent=hsv(hue + rng.uniform(0.25, 0.75), rng.uniform(0.6, 0.95), rng.uniform(0.7, 0.95)).tolist(),
                bg=hsv(0, 0, float(rng.choice([1.0, 0.96, 0.93]))).tolist())


def sample_toolbar(rng):
    return dict(nav=str(rng.choice(['menu', 'back', 'none'], p=[0.45, 0.35, 0.2])),
                title_len=rng.uniform(0.2, 0.55), n_actions=int(rng.integers(0, 4)),
                tall_toolbar=bool(rng.random() < 0.2))


def sample_header(rng):
    return dict(n_tabs=int(rng.choice([0, 2, 3, 4], p=[0.6, 0.13, 0.14, 0.13])),
                search=bool(rng.random() < 0.25))


def sample_content(rng):
    return dict(content=str(rng.choice(['list', 'grid', 'form', 'detail'], p=[0.35, 0.2, 0.2, 0.25])),
                # list
                n_items=int(rng.integers(4, 10)), item_h=rng.uniform(160, 280),
                leading=str(rng.choice(['none', 'icon', 'avatar', 'thumb'])), item_lines=int(rng.integers(1, 3)),
                trailing=str(rng.choice(['none', 'chevron', 'checkbox', 'switch', 'meta'])),
                dividers=bool(rng.random() < 0.6),
                # grid
                cols=int(rng.integers(2, 4)), img_ratio=rng.uniform(0.55, 1.0), card_lines=int(rng.integers(1, 3)),
                card_button=bool(rng.random() < 0.3),
                # form
                n_inputs=int(rng.integers(2, 6)), outlined=bool(rng.random() < 0.5), labels=bool(rng.random() < 0.5),
                form_check=bool(rng.random() < 0.4), n_buttons=int(rng.integers(1, 3)), logo=bool(rng.random() < 0.5),
                # detail
                header_h=rng.uniform(500, 900), n_paragraphs=int(rng.integers(1, 4)),
                detail_buttons=int(rng.integers(0, 4)), author=bool(rng.random() < 0.5))


def sample_footer(rng):
    return dict(fab=bool(rng.random() < 0.3), n_nav=int(rng.choice([0, 3, 4, 5], p=[0.5, 0.2, 0.2, 0.1])),
                nav_labels=bool(rng.random() < 0.6))


GUI_GROUPS = {'theme': sample_theme, 'toolbar': sample_toolbar, 'header': sample_header,
              'content': sample_content, 'footer': sample_footer}
GUI_SHAPE_GROUPS = ('toolbar', 'header', 'content', 'footer')


# ----------------------------------------------------------------------------- trees
def node(cls, label, box, children=(), **style):
    """A RICO node; `style` (kind=... and what its painter / sketcher read) stays private."""
    return {'class': cls, 'bounds': [int(round(v)) for v in box], 'componentLabel': label,
            'children': list(children), '_style': style}


def text_node(box, length, lines=1, weight='body', on_colour=False):
    """A text of `lines` lines; weight: title, body, caption or hint; on_colour: on a coloured bar."""
    return node('android.widget.TextView', 'Text', box, kind='text', length=length, lines=lines,
                weight=weight, on_colour=on_colour)


def icon_node(cx, cy, r, shape='circle', on_colour=False, label='Icon', cls='android.widget.ImageButton'):
    """A square icon of radius r at (cx, cy); shape: see gui.Screen.icon."""
    return node(cls, label, [cx - r, cy - r, cx + r, cy + r], kind='icon', shape=shape, on_colour=on_colour)


def image_node(box, round_=False):
    """A picture (round_: an avatar)."""
    return node('android.widget.ImageView', 'Image', box, kind='image', round=round_)


def button_node(box, length=0.5, filled=True):
    """A text button; length: its label's share of the width."""
    return node('android.widget.Button', 'Text Button', box, kind='button', length=length, filled=filled)


def build_toolbar(d, y):
    """The app bar from height y (navigation icon, title, action icons) -> (node, its bottom)."""
    h = 224 * (1.6 if d['tall_toolbar'] else 1)
    cy = y + 112
    kids = []
    x = 48
    if d['nav'] != 'none':
        kids.append(icon_node(x + 48, cy, 48, 'menu' if d['nav'] == 'menu' else 'arrow', True))
        x += 160
    if d['tall_toolbar']:
        kids.append(text_node([72, y + h - 130, 72 + d['title_len'] * 1100, y + h - 40], 1.0, 1, 'title', True))
    else:
        kids.append(text_node([x, cy - 40, x + d['title_len'] * 900, cy + 40], 1.0, 1, 'title', True))
    for k in range(d['n_actions']):
        kids.append(icon_node(W_GUI - 96 - k * 150, cy, 48, ['search', 'dots', 'square'][k], True))
    return node('android.support.v7.widget.Toolbar', 'Toolbar', [0, y, W_GUI, y + h], kids,
                kind='bar', fill='primary'), y + h


def build_header(d, y):
    """Optional tabs and search bar from height y -> (nodes, their bottom)."""
    out = []
    if d['n_tabs']:
        n, tw = d['n_tabs'], W_GUI / d['n_tabs']
        tabs = [node('android.widget.TextView', 'Text Button', [k * tw + 20, y + 20, (k + 1) * tw - 20, y + 172],
                     [text_node([k * tw + tw * 0.25, y + 66, (k + 1) * tw - tw * 0.25, y + 126], 1.0, 1,
                                'caption', True)], kind='tab', selected=k == 0) for k in range(n)]
        out.append(node('android.support.design.widget.TabLayout', 'Multi-Tab', [0, y, W_GUI, y + 192], tabs,
                        kind='bar', fill='primary'))
        y += 192
    if d['search']:
        box = [48, y + 40, W_GUI - 48, y + 200]
        kids = [icon_node(box[0] + 90, y + 120, 40, 'search'),
                text_node([box[0] + 170, y + 95, box[0] + 600, y + 145], 1.0, 1, 'hint')]
        out.append(node('android.widget.EditText', 'Input', box, kids, kind='input', outlined=True))
        y += 240
    return out, y


def build_list(d, top, bottom):
    """List rows between top and bottom: leading icon / avatar / thumbnail, one or two text
    lines, a trailing chevron / checkbox / switch / meta text, optional dividers."""
    items, y = [], top
    for k in range(d['n_items']):
        h = d['item_h'] + (60 if d['item_lines'] == 2 else 0)
        if y + h > bottom:
            break
        kids, x = [], 64
        cy = y + h / 2
        if d['leading'] == 'icon':
            kids.append(icon_node(x + 40, cy, 40, ['circle', 'square', 'star'][k % 3]))
            x += 160
        elif d['leading'] in ('avatar', 'thumb'):
            r = min(h * 0.35, 80)
            kids.append(image_node([x, cy - r, x + 2 * r, cy + r], d['leading'] == 'avatar'))
            x += 2 * r + 56
        right = W_GUI - 64
        if d['trailing'] in ('chevron', 'checkbox'):
            kids.append(icon_node(right - 40, cy, 40, d['trailing'], label='Icon' if d['trailing'] == 'chevron'
                                  else 'Checkbox', cls='android.widget.CheckBox' if d['trailing'] == 'checkbox'
                                  else 'android.widget.ImageView'))
            right -= 140
        elif d['trailing'] == 'switch':
            kids.append(node('android.widget.Switch', 'On/Off Switch', [right - 150, cy - 40, right, cy + 40],
                             kind='switch', on=bool((k * 7 + d['n_items']) % 3)))
            right -= 210
        elif d['trailing'] == 'meta':
            kids.append(text_node([right - 200, cy - 70 if d['item_lines'] == 2 else cy - 25, right,
                                   cy - 20 if d['item_lines'] == 2 else cy + 25], 1.0, 1, 'caption'))
            right -= 240
        lens = (0.55 + 0.35 * ((k * 37) % 10) / 10, 0.4 + 0.5 * ((k * 53) % 10) / 10)
        if d['item_lines'] == 2:
            kids.append(text_node([x, cy - 80, x + (right - x) * lens[0], cy - 10], 1.0, 1, 'body'))
            kids.append(text_node([x, cy + 20, x + (right - x) * lens[1], cy + 70], 1.0, 1, 'caption'))
        else:
            kids.append(text_node([x, cy - 35, x + (right - x) * lens[0], cy + 35], 1.0, 1, 'body'))
        items.append(node('android.widget.LinearLayout', 'List Item', [0, y, W_GUI, y + h], kids,
                          kind='item', divider=d['dividers']))
        y += h
    return [node('android.support.v7.widget.RecyclerView', 'Layout', [0, top, W_GUI, bottom], items, kind='group')]


def build_grid(d, top, bottom):
    """Rows of cards (picture, text lines, optional button) between top and bottom."""
    cols, gap = d['cols'], 40
    cw = (W_GUI - gap * (cols + 1)) / cols
    img_h = cw * d['img_ratio']
    ch = img_h + 40 + d['card_lines'] * 70 + (150 if d['card_button'] else 0)
    cards, y, k = [], top + gap, 0
    while y + ch <= bottom:
        for c in range(cols):
            x = gap + c * (cw + gap)
            kids = [image_node([x, y, x + cw, y + img_h])]
            ty = y + img_h + 30
            for line in range(d['card_lines']):
                ln = 0.5 + 0.4 * (((k + line) * 41) % 10) / 10
                kids.append(text_node([x + 30, ty, x + 30 + (cw - 60) * ln, ty + 50], 1.0, 1,
                                      'body' if line == 0 else 'caption'))
                ty += 70
            if d['card_button']:
                kids.append(button_node([x + 30, ty + 20, x + cw * 0.6, ty + 120], 0.6, filled=False))
            cards.append(node('android.support.v7.widget.CardView', 'Card', [x, y, x + cw, y + ch], kids,
                              kind='card'))
            k += 1
        y += ch + gap
    return [node('android.support.v7.widget.RecyclerView', 'Layout', [0, top, W_GUI, bottom], cards, kind='group')]


def build_form(d, top, bottom):
    """An optional logo, labelled inputs, a checkbox and buttons between top and bottom."""
    kids, y, m = [], top + 60, 96
    if d['logo']:
        kids.append(image_node([W_GUI / 2 - 180, y, W_GUI / 2 + 180, y + 360]))
        y += 420
    for k in range(d['n_inputs']):
        if d['labels']:
            kids.append(text_node([m, y, m + 300 + 60 * (k % 3), y + 50], 1.0, 1, 'caption'))
            y += 70
        if y + 170 > bottom:
            break
        hint = text_node([m + 40, y + 55, m + 40 + 400 + 90 * ((k * 3) % 4), y + 105], 1.0, 1, 'hint')
        kids.append(node('android.widget.EditText', 'Input', [m, y, W_GUI - m, y + 160], [hint],
                         kind='input', outlined=d['outlined']))
        y += 220
    if d['form_check'] and y + 100 <= bottom:
        kids.append(icon_node(m + 40, y + 50, 40, 'checkbox', label='Checkbox', cls='android.widget.CheckBox'))
        kids.append(text_node([m + 120, y + 25, m + 700, y + 75], 1.0, 1, 'caption'))
        y += 140
    for k in range(d['n_buttons']):
        if y + 160 > bottom:
            break
        kids.append(button_node([m, y + 20, W_GUI - m, y + 160], 0.3, filled=k == 0))
        y += 180
    return [node('android.widget.ScrollView', 'Layout', [0, top, W_GUI, bottom], kids, kind='group')]


def build_detail(d, top, bottom):
    """A header picture, title, optional author, paragraphs and a button bar."""
    kids, m = [], 64
    hh = min(d['header_h'], (bottom - top) * 0.45)
    kids.append(image_node([0, top, W_GUI, top + hh]))
    y = top + hh + 50
    kids.append(text_node([m, y, m + 900, y + 90], 1.0, 1, 'title'))
    y += 130
    if d['author']:
        kids.append(image_node([m, y, m + 120, y + 120], True))
        kids.append(text_node([m + 160, y + 35, m + 600, y + 85], 1.0, 1, 'caption'))
        y += 170
    for k in range(d['n_paragraphs']):
        lines = 2 + (k * 2 + d['n_paragraphs']) % 3
        if y + lines * 72 > bottom:
            break
        kids.append(text_node([m, y, W_GUI - m, y + lines * 72], 1.0, lines, 'body'))
        y += lines * 72 + 50
    nb = d['detail_buttons']
    if nb and y + 150 <= bottom:
        bw = (W_GUI - 2 * m - (nb - 1) * 40) / nb
        row = [button_node([m + k * (bw + 40), y, m + k * (bw + 40) + bw, y + 140], 0.5, filled=k == nb - 1)
               for k in range(nb)]
        kids.append(node('android.widget.LinearLayout', 'Button Bar', [m, y, W_GUI - m, y + 140], row, kind='group'))
    return [node('android.widget.FrameLayout', 'Layout', [0, top, W_GUI, bottom], kids, kind='group')]


def build_screen(d):
    """The RICO-style tree of a screen design (root covers the whole 1440x2560 frame)."""
    toolbar, y = build_toolbar(d, STATUS_H)
    header, y = build_header(d, y)
    bottom = H_GUI - (224 if d['n_nav'] else 0)
    content = {'list': build_list, 'grid': build_grid, 'form': build_form, 'detail': build_detail}[d['content']]
    kids = [toolbar] + header + content(d, y, bottom)
    if d['n_nav']:
        n, w = d['n_nav'], W_GUI / d['n_nav']
        icons = []
        for k in range(n):
            cx = (k + 0.5) * w
            ic = [icon_node(cx, bottom + (80 if d['nav_labels'] else 112), 44, ['circle', 'square', 'star', 'dots',
                                                                                 'search'][k])]
            if d['nav_labels']:
                ic.append(text_node([cx - 90, bottom + 150, cx + 90, bottom + 195], 1.0, 1, 'caption'))
            icons.append(node('android.widget.FrameLayout', 'Layout', [k * w, bottom, (k + 1) * w, H_GUI], ic,
                              kind='group', selected=k == 0))
        kids.append(node('android.support.design.widget.BottomNavigationView', 'Bottom Navigation',
                         [0, bottom, W_GUI, H_GUI], icons, kind='bar', fill='white'))
    if d['fab']:
        kids.append(node('android.support.design.widget.FloatingActionButton', 'Icon',
                         [W_GUI - 64 - 224, bottom - 64 - 224, W_GUI - 64, bottom - 64], kind='fab'))
    frame = node('android.widget.FrameLayout', 'Layout', [0, STATUS_H, W_GUI, H_GUI], kids, kind='group')
    return node('com.android.internal.policy.PhoneWindow$DecorView', 'Root', [0, 0, W_GUI, H_GUI], [frame],
                kind='group')


def walk(n):
    """The nodes of a tree, depth first, parents before children (painter's order)."""
    yield n
    for c in n['children']:
        yield from walk(c)


def rico_json(tree):
    """The tree without the private render hints."""
    return {k: ([rico_json(c) for c in v] if k == 'children' else v) for k, v in tree.items() if k != '_style'}


def gui_signature(d):
    """What a sketch can see of a screen design: equal signatures = same layout."""
    return hashlib.sha1(json.dumps([(n['bounds'], n['_style'].get('kind'), n['_style'].get('shape'))
                                    for n in walk(build_screen(d))]).encode()).hexdigest()

