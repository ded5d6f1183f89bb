"""Tiny on-disk datasets (QMUL, SWIRE, Folder layouts) written into tmp_path, and a config helper."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image, ImageDraw

import experiment
import layouts
import options
import proposals


def make_config(dataset_name='ChairV2', data_root='data', *extra, **kw):
    """The data layer's DataConfig from main.py's options with small, fast settings; keyword
    args override option values."""
    args = options.parse_args('main', ['--dataset', dataset_name, '--data_root', str(data_root),
                                       '--image_size', '32', *extra])
    for k, v in kw.items():
        setattr(args, k, v)
    return experiment.data_config(args)


def vector_sketch(shift=0):
    """(L, 3) x, y, pen: a square outline, a diagonal and a dot - 3 strokes."""
    s = shift
    return np.array([[40 + s, 40, 0], [200 + s, 40, 0], [200 + s, 200, 0], [40 + s, 200, 0], [40 + s, 40, 1],
                     [60 + s, 60, 0], [180 + s, 180, 1],
                     [128 + s, 100, 1]], dtype=np.float64)


def photo_image(size, colour):
    W, H = size
    img = Image.new('RGB', size, (240, 240, 240))
    ImageDraw.Draw(img).rectangle([W // 4, H // 4, 3 * W // 4, 3 * H // 4], fill=colour)
    return img


def photo_boxes(size):
    W, H = size
    return [[0, 0, W, H], [W // 4, H // 4, 3 * W // 4, 3 * H // 4], [2, 3, W // 2, H - 5]]


QMUL_PHOTOS = {  # name -> (size, split); names with '_' test the photo-of-key rule
    'chair_a': ((64, 64), 'train'), 'chair_b': ((80, 48), 'train'), 'c3': ((64, 64), 'train'),
    'test_x': ((64, 64), 'test'), 'ty': ((48, 80), 'test'),
}


def write_qmul(root, name='ChairV2', boxes=True):
    """<root>/<name>/{<name>_Coordinate, photo/}, <root>/<name>_Select...pickle.
    2 sketches per photo: 6 train sketches / 3 photos, 4 test sketches / 2 photos."""
    folder = root / name
    (folder / 'photo').mkdir(parents=True)
    coords, table = {}, {}
    for i, (photo, (size, split)) in enumerate(QMUL_PHOTOS.items()):
        photo_image(size, (40 * i, 100, 200)).save(folder / 'photo' / f'{photo}.png')
        table[f'{photo}.png'] = photo_boxes(size)
        for n in (1, 2):
            coords[f'/{split}/{photo}_{n}'] = vector_sketch(shift=4 * i + n)
    with open(folder / f'{name}_Coordinate', 'wb') as f:
        pickle.dump(coords, f)
    if boxes:
        with open(root / layouts.BOX_PICKLE.format(name), 'wb') as f:
            pickle.dump(table, f)
    return root


def gui_tree_json(extra_children=()):
    """RICO semantic-annotation style tree, 1440x2560 frame."""
    items = [{'class': 'Item', 'bounds': [0, 400 + 300 * i, 1440, 680 + 300 * i], 'children': []} for i in range(3)]
    return {'class': 'Root', 'bounds': [0, 0, 1440, 2560], 'children': [
        {'class': 'Toolbar', 'componentLabel': 'Toolbar', 'bounds': [0, 0, 1440, 320], 'children': [
            {'class': 'Text', 'componentLabel': 'Text', 'bounds': [100, 80, 700, 240]}]},
        {'class': 'List', 'componentLabel': 'List Item', 'bounds': [0, 320, 1440, 2560], 'children': items},
        *extra_children]}


def gui_sketch(size=(90, 160)):
    """White wireframe on black (as SWIRE): a toolbar bar and three list boxes."""
    W, H = size
    img = Image.new('L', size, 0)
    d = ImageDraw.Draw(img)
    d.rectangle([4, 4, W - 5, 18], outline=255, width=2)
    for i in range(3):
        d.rectangle([6, 30 + 30 * i, W - 7, 50 + 30 * i], outline=255, width=2)
    return img


def swire_ids():
    """3 train ids and 1 test id under layouts.swire_split (deterministic)."""
    ids = [f'{i}' for i in range(200)]
    train = [r for r in ids if layouts.swire_split(r) == 'train'][:3]
    test = [r for r in ids if layouts.swire_split(r) == 'test'][:1]
    return train + test


def write_swire(root, name='SWIRE'):
    """<root>/<name>/sketches/<id>_<n>.jpg (2 per screen), combined/<id>.jpg + .json.
    The first screen uses the raw view-hierarchy form and has an off-screen and a zero-area element."""
    sk, gui = root / name / 'sketches', root / name / 'combined'
    sk.mkdir(parents=True)
    gui.mkdir(parents=True)
    for j, rico in enumerate(swire_ids()):
        Image.new('RGB', (90, 160), (255, 255, 255)).save(gui / f'{rico}.jpg', quality=95)
        if j == 0:
            tree = {'activity': {'root': gui_tree_json([
                {'class': 'Off', 'bounds': [1000, 2400, 1600, 2800]},       # partly off screen: clamped
                {'class': 'Zero', 'bounds': [100, 100, 100, 500]}, None])}}  # zero area: dropped
        else:
            tree = gui_tree_json()
        (gui / f'{rico}.json').write_text(json.dumps(tree))
        for n in (1, 2):
            gui_sketch().save(sk / f'{rico}_{n}.jpg', quality=95)
    return root


def write_folder(root, boxes=True):
    """pairs.csv with raster sketches of every polarity / alpha, a .npy vector sketch, 3 photos."""
    (root / 'sketches').mkdir(parents=True)
    (root / 'photos').mkdir()
    dark = Image.new('L', (100, 80), 255)
    ImageDraw.Draw(dark).rectangle([10, 10, 40, 40], outline=0, width=3)
    ImageDraw.Draw(dark).line([70, 10, 70, 70], fill=0, width=3)
    dark.save(root / 'sketches' / 'dark.png')
    Image.eval(dark, lambda v: 255 - v).save(root / 'sketches' / 'light.png')   # white on black
    rgba = Image.new('RGBA', (100, 80), (0, 0, 0, 0))                              # transparent
    rgba.putalpha(Image.eval(dark, lambda v: 255 - v))
    rgba.save(root / 'sketches' / 'alpha.png')
    np.save(root / 'sketches' / 'vec.npy', vector_sketch())
    rows = ['sketch,photo,split']
    for i, (sk, split) in enumerate([('dark.png', 'train'), ('light.png', 'train'),
                                     ('alpha.png', 'test'), ('vec.npy', 'train')]):
        ph = f'photos/p{i % 3}.png'     # the test photo p2 is in no training row
        if not (root / ph).exists():
            photo_image((64, 64), (200, 60 * i, 50)).save(root / ph)
        rows.append(f'sketches/{sk},{ph},{split}')
    (root / 'pairs.csv').write_text('\n'.join(rows) + '\n')
    if boxes:
        write_box_cache(root, {f'photos/p{i}.png': photo_boxes((64, 64)) for i in range(3)})
    return root


def write_box_cache(root, table):
    """The Folder layout's box cache (proposals.BoxCache) with these boxes, valid for the photos now."""
    photos = {name: {**proposals.BoxCache.stamp(root / name), 'boxes': boxes} for name, boxes in table.items()}
    (root / layouts.FOLDER_BOX_CACHE).write_text(json.dumps({'version': proposals.BoxCache.VERSION, 'photos': photos}))


@pytest.fixture
def qmul_root(tmp_path):
    return write_qmul(tmp_path)


@pytest.fixture
def swire_root(tmp_path):
    return write_swire(tmp_path)


@pytest.fixture
def folder_root(tmp_path):
    return write_folder(tmp_path)
