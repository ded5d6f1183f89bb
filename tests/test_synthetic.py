"""The embedded procedural datasets (package synthetic): layout contract, determinism, coarse-to-fine
sketches, GUI trees, atomic regeneration. Sizes are tiny: the whole file runs in seconds."""
import hashlib
import inspect
import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

import synthetic
from synthetic import chairs as chair_data
from synthetic import families, geometry, gui, gui_tree

CHAIRS = dict(train_photos=4, test_photos=3, sketches_per_photo=2)
SCREENS = dict(screens=4, sketches_per_screen=2)


def tree_digest(root):
    """sha1 of every file's relative path and bytes under root (sorted)."""
    h = hashlib.sha1()
    for p in sorted(q for q in root.rglob('*') if q.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def strokes(points):
    ends = np.flatnonzero(points[:, 2] == 1)
    return np.split(points[:, :2], ends[:-1] + 1)


@pytest.fixture(scope='module')
def chairs(tmp_path_factory):
    root = tmp_path_factory.mktemp('chairs')
    synthetic.ensure_synthetic(root, 'Synthetic', 0, **CHAIRS)
    return root


@pytest.fixture(scope='module')
def screens(tmp_path_factory):
    root = tmp_path_factory.mktemp('screens')
    synthetic.ensure_synthetic(root, 'SyntheticGUI', 0, **SCREENS)
    return root


def test_deterministic_per_seed(chairs, screens, tmp_path):
    for name, size, first in (('Synthetic', CHAIRS, chairs), ('SyntheticGUI', SCREENS, screens)):
        again = synthetic.ensure_synthetic(tmp_path / 'again', name, 0, **size)
        other = synthetic.ensure_synthetic(tmp_path / 'other', name, 1, **size)
        assert tree_digest(again) == tree_digest(first / name)
        assert tree_digest(other) != tree_digest(first / name)
    boxes = synthetic.box_pickle_path
    assert boxes(tmp_path / 'again', 'Synthetic').read_bytes() == boxes(chairs, 'Synthetic').read_bytes()


def test_qmul_layout(chairs):
    folder = chairs / 'Synthetic'
    with open(folder / 'Synthetic_Coordinate', 'rb') as f:
        coords = pickle.load(f)
    assert len(coords) == (CHAIRS['train_photos'] + CHAIRS['test_photos']) * CHAIRS['sketches_per_photo']
    split_of = {}
    for key, pts in coords.items():
        m = re.fullmatch(r'/(train|test)/(.+)_(\d+)', key)
        assert m, key
        photo = key.split('/')[-1].rsplit('_', 1)[0]          # the loader's rule
        assert (folder / 'photo' / f'{photo}.png').is_file()
        assert split_of.setdefault(photo, m.group(1)) == m.group(1), 'a photo in two splits'
        assert pts.dtype == np.float64 and pts.ndim == 2 and pts.shape[1] == 3
        assert set(np.unique(pts[:, 2])) <= {0.0, 1.0} and pts[-1, 2] == 1
        assert pts[:, :2].min() >= 0 and pts[:, :2].max() <= 255
        ss = strokes(pts)
        assert 1 <= len(ss) <= chair_data.MAX_STROKES
        assert all(2 <= len(s) <= geometry.MAX_STROKE_POINTS for s in ss)
    assert sum(v == 'train' for v in split_of.values()) == CHAIRS['train_photos']
    assert sum(v == 'test' for v in split_of.values()) == CHAIRS['test_photos']
    assert len(list((folder / 'photo').glob('*.png'))) == len(split_of)

    with open(synthetic.box_pickle_path(chairs, 'Synthetic'), 'rb') as f:
        boxes = pickle.load(f)
    assert set(boxes) == {f'{p}.png' for p in split_of}
    for name, bs in boxes.items():
        img = Image.open(folder / 'photo' / name)
        assert img.mode == 'RGB'
        W, H = img.size
        assert len(bs) == 16 and bs[0] == [0, 0, W, H]
        assert len({tuple(b) for b in bs}) == 16
        for x1, y1, x2, y2 in bs:
            assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
            assert 0 <= x1 and 0 <= y1 and x2 <= W and y2 <= H
            assert x2 - x1 >= 10 and y2 - y1 >= 10


def test_sketches_are_coarse_to_fine(chairs):
    """The first stroke is (half of) the silhouette: it spans much of the drawing; details (the
    smallest strokes) come last."""
    with open(chairs / 'Synthetic' / 'Synthetic_Coordinate', 'rb') as f:
        coords = pickle.load(f)
    first_vs_last = []
    for pts in coords.values():
        ss = strokes(pts)
        side = lambda s: (s.max(0) - s.min(0)).max()
        assert side(ss[0]) >= 0.3 * side(pts[:, :2])
        first_vs_last.append(side(ss[0]) > side(ss[-1]))
    assert np.mean(first_vs_last) > 0.8


def test_sketch_matches_its_photo():
    """A sketch is drawn from the same geometry as its photo: its ink lies over the chair."""
    d = families.families(geometry.rng_for(3, 0, 0), 1, chair_data.CHAIR_GROUPS, chair_data.SHAPE_GROUPS,
                          chair_data.chair_signature)[0][1]
    parts = chair_data.build_chair(d)
    photo = np.asarray(chair_data.render_photo(d, parts, geometry.rng_for(3, 1, 0)).convert('L'), float)
    pts = chair_data.chair_sketch(parts, geometry.rng_for(3, 2, 0, 1))
    chair = photo < 200                                        # the background is near-white
    ys, xs = np.nonzero(chair)
    lo, hi = np.array([xs.min(), ys.min()]), np.array([xs.max(), ys.max()])
    inside = ((pts[:, :2] >= lo - 30) & (pts[:, :2] <= hi + 30)).all(1)
    assert inside.mean() > 0.95


def test_siblings_differ():
    """Families share most parts, yet no two members have the same shape."""
    fam = families.families(geometry.rng_for(0, 0, 0), 20, chair_data.CHAIR_GROUPS, chair_data.SHAPE_GROUPS,
                            chair_data.chair_signature)
    sigs = [chair_data.chair_signature(d) for _, d in fam]
    assert len(set(sigs)) == len(sigs)
    assert len({f for f, _ in fam}) < len(fam)                # some families have several members


def test_gui_layout(screens):
    folder = screens / 'SyntheticGUI'
    jsons = sorted((folder / 'combined').glob('*.json'))
    assert len(jsons) == SCREENS['screens']
    for j in jsons:
        rid = j.stem
        assert re.fullmatch(r'\d{6}', rid)
        shot = Image.open(folder / 'combined' / f'{rid}.jpg')
        assert shot.size == gui.SCREEN_SIZE and shot.size[0] * 16 == shot.size[1] * 9
        tree = json.loads(j.read_text())
        assert tree['bounds'] == [0, 0, 1440, 2560]
        labels = set()

        def check(node, parent):
            assert {'class', 'bounds', 'componentLabel', 'children'} <= set(node)
            x1, y1, x2, y2 = node['bounds']
            assert 0 <= x1 < x2 <= 1440 and 0 <= y1 < y2 <= 2560
            px1, py1, px2, py2 = parent
            assert px1 <= x1 and py1 <= y1 and x2 <= px2 and y2 <= py2, (node['bounds'], parent)
            labels.add(node['componentLabel'])
            for c in node['children']:
                check(c, node['bounds'])

        check(tree, tree['bounds'])
        assert 'Toolbar' in labels and len(labels) >= 4
        for n in range(1, SCREENS['sketches_per_screen'] + 1):
            sk = np.asarray(Image.open(folder / 'sketches' / f'{rid}_{n}.jpg').convert('L'), float)
            ink = sk > 128
            assert sk.mean() < 60, 'sketches are white ink on black'
            assert 0.01 < ink.mean() < 0.3 and sk.max() > 200
    assert len(list((folder / 'sketches').glob('*.jpg'))) == SCREENS['screens'] * SCREENS['sketches_per_screen']


def test_gui_kind_table_covers_the_builders():
    """Every element kind the tree builders emit has a painter and a sketcher in gui.KINDS, and the
    table holds no kind the builders never emit. The kinds are read from the builders' source
    (rare branches included) and checked against the trees of many sampled designs."""
    written = set(re.findall(r"kind=['\"](\w+)['\"]", inspect.getsource(gui_tree)))
    rng = geometry.rng_for(0, 99)
    built = {n['_style']['kind'] for _ in range(300)
             for n in gui_tree.walk(gui_tree.build_screen(families.sample_design(rng, gui_tree.GUI_GROUPS)))}
    assert len(built) >= 10 and built <= written, f'kinds not written as kind=\'...\' literals: {built - written}'
    assert written == set(gui.KINDS), (f'kinds without painter / sketcher: {sorted(written - set(gui.KINDS))}; '
                                       f'table entries never emitted: {sorted(set(gui.KINDS) - written)}')
    for name, kind in gui.KINDS.items():
        assert callable(kind.paint) and callable(kind.sketch), name


def test_command_line(tmp_path, capsys):
    """python -m synthetic: generates, prints the marker, writes the preview; bad sizes are usage errors."""
    from synthetic.__main__ import main
    grid = tmp_path / 'preview.png'
    main(['--name', 'SyntheticGUI', '--data_root', str(tmp_path), '--size', 'screens=2', 'sketches_per_screen=1',
          '--preview', str(grid)])
    assert synthetic.read_marker(tmp_path / 'SyntheticGUI')['size'] == {'screens': 2, 'sketches_per_screen': 1}
    assert Image.open(grid).size[0] > 0 and 'ready' in capsys.readouterr().out
    for bad in ('screens=0', 'photos=3'):
        with pytest.raises(SystemExit):
            main(['--name', 'SyntheticGUI', '--data_root', str(tmp_path), '--size', bad])


def test_regenerates_atomically_on_seed_change(tmp_path, monkeypatch):
    root = tmp_path / 'data'
    small = dict(train_photos=2, test_photos=2, sketches_per_photo=1)
    folder = synthetic.ensure_synthetic(root, 'Synthetic', 0, **small)
    digest0 = tree_digest(folder)
    stamp = (folder / synthetic.MARKER).stat().st_mtime_ns
    synthetic.ensure_synthetic(root, 'Synthetic', 0, **small)         # up to date: untouched
    assert (folder / synthetic.MARKER).stat().st_mtime_ns == stamp

    # A crash half-way through leaves the old dataset intact and no temporary folder.
    def crash(out, seed, size):
        (out / 'photo').mkdir()
        raise RuntimeError('disk full')
    monkeypatch.setitem(synthetic.GENERATORS, 'Synthetic', crash)
    with pytest.raises(RuntimeError):
        synthetic.ensure_synthetic(root, 'Synthetic', 1, **small)
    monkeypatch.undo()
    assert tree_digest(folder) == digest0
    assert sorted(p.name for p in root.iterdir()) == ['Synthetic', 'Synthetic_Select_Search_boxes_min10_topN16.pickle']

    synthetic.ensure_synthetic(root, 'Synthetic', 1, **small)
    marker = json.loads((folder / synthetic.MARKER).read_text())
    assert marker['seed'] == 1 and marker['size'] == small and marker['version'] == synthetic.GENERATOR_VERSION
    assert tree_digest(folder) != digest0
    assert sorted(p.name for p in root.iterdir()) == ['Synthetic', 'Synthetic_Select_Search_boxes_min10_topN16.pickle']
    box_file = synthetic.box_pickle_path(root, 'Synthetic')
    assert hashlib.sha1(box_file.read_bytes()).hexdigest() == marker['boxes_sha1']

    # A box pickle from elsewhere (or missing) does not pass for this folder's.
    box_file.write_bytes(pickle.dumps({}))
    synthetic.ensure_synthetic(root, 'Synthetic', 1, **small)
    assert hashlib.sha1(box_file.read_bytes()).hexdigest() == marker['boxes_sha1']


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='unknown synthetic'):
        synthetic.ensure_synthetic(tmp_path, 'Chairs')
    with pytest.raises(ValueError, match='unknown size'):
        synthetic.ensure_synthetic(tmp_path, 'Synthetic', 0, photos=3)
    with pytest.raises(ValueError, match='seed'):
        synthetic.ensure_synthetic(tmp_path, 'SyntheticGUI', -1, screens=2)
    assert not any(tmp_path.iterdir())
