"""Data layer: joint transforms, collate, the three layouts, triplets, errors, repairs, CLI."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import (
    make_config,
    photo_image,
    vector_sketch,
    write_qmul,
)
from PIL import Image, ImageDraw

import dataset
import layouts
import prepare
import proposals
import transforms
from files import DatasetError


# ----------------------------------------------------------------------------- joint transforms
def rect_image(size, rect):
    """White W x H image with a black filled rectangle covering pixels rect = [x1, y1, x2, y2)."""
    img = Image.new('RGB', size, 'white')
    ImageDraw.Draw(img).rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill='black')
    return img, np.array([rect], dtype=np.float32)


def ink_box(x):
    """Bounding box [x1, y1, x2, y2) of the dark pixels of a PIL image or an image tensor in [0, 1]."""
    if torch.is_tensor(x):
        dark = (x[0] < 0.5).numpy()
    else:
        dark = np.asarray(x.convert('L')) < 128
    ys, xs = np.nonzero(dark)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize('size,rect,out', [((40, 80), [10, 20, 30, 60], 80), ((100, 50), [10, 5, 60, 45], 64),
                                           ((64, 64), [0, 0, 20, 64], 137)])
def test_joint_resize_non_square(size, rect, out):
    img, boxes = rect_image(size, rect)
    img2, boxes2 = transforms.joint_resize(img, boxes, out)
    assert img2.size == (out, out)
    np.testing.assert_allclose(ink_box(img2), boxes2[0], atol=1)


def test_joint_center_crop_and_flip_exact():
    img, boxes = rect_image((70, 60), [15, 10, 50, 30])
    crop, cb = transforms.joint_center_crop(img, boxes, 50)   # offsets 10, 5
    assert crop.size == (50, 50) and cb.tolist() == [[5, 5, 40, 25]]
    np.testing.assert_array_equal(ink_box(crop), cb[0])
    flip, fb = transforms.joint_hflip(crop, cb)
    assert fb.tolist() == [[10, 5, 45, 25]]
    np.testing.assert_array_equal(ink_box(flip), fb[0])
    img, boxes = rect_image((30, 20), [0, 0, 7, 20])
    flip, fb = transforms.joint_hflip(img, boxes)
    assert fb.tolist() == [[23, 0, 30, 20]]
    np.testing.assert_array_equal(ink_box(flip), fb[0])


def test_center_crop_clamps_boxes_and_keeps_a_1px_box():
    img = Image.new('RGB', (100, 100), 'white')
    boxes = np.array([[0, 0, 100, 100], [2, 40, 30, 60], [0, 0, 8, 8], [95, 95, 100, 100]], np.float32)
    _, b = transforms.joint_center_crop(img, boxes, 80)   # offset 10
    assert b.tolist() == [[0, 0, 80, 80], [0, 30, 20, 50], [0, 0, 1, 1], [79, 79, 80, 80]]


@pytest.mark.parametrize('flip', [False, True])
@pytest.mark.parametrize('size', [(256, 256), (500, 300), (90, 160)])
def test_train_and_test_transforms_keep_boxes_on_the_rectangle(size, flip):
    W, H = size
    img, boxes = rect_image(size, [W // 5, H // 4, W // 2, 3 * H // 4])
    x, b = transforms.to_tensors(*transforms.train_geometry(img, boxes, 64))
    x, b = transforms.hflip(x, b) if flip else (x, b)
    assert x.shape == (3, 64, 64) and b.shape == (1, 4)
    np.testing.assert_allclose(ink_box(x), b[0].numpy(), atol=1)
    assert (b[0, 0] + b[0, 2] > 64) == bool(flip)   # the rectangle is on the left unless flipped
    x, b = transforms.to_tensors(*transforms.test_geometry(img, boxes, 48))
    assert x.shape == (3, 48, 48)
    np.testing.assert_allclose(ink_box(x), b[0].numpy(), atol=1)


def test_collate_pads_boxes_and_masks():
    items = [{'sketch': torch.zeros(3, 8, 8), 'sketch_boxes': torch.ones(n, 4), 'target': n, 'name': f'n{n}'}
             for n in (2, 5, 1)]
    b = dataset.collate(items)
    assert b['sketch'].shape == (3, 3, 8, 8)
    assert b['sketch_boxes'].shape == (3, 5, 4)
    assert b['sketch_mask'].tolist() == [[True] * 2 + [False] * 3, [True] * 5, [True] + [False] * 4]
    assert (b['sketch_boxes'][~b['sketch_mask']] == 0).all() and (b['sketch_boxes'][b['sketch_mask']] == 1).all()
    assert b['target'].dtype == torch.long and b['target'].tolist() == [2, 5, 1]
    assert b['name'] == ['n2', 'n5', 'n1']


# ----------------------------------------------------------------------------- QMUL layout
def boxes_inside(boxes, size):
    return bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= size).all()
                and (boxes[:, 3] <= size).all() and (boxes[:, 2] > boxes[:, 0]).all()
                and (boxes[:, 3] > boxes[:, 1]).all())


def test_qmul_loader(qmul_root):
    train, test = dataset.build_datasets(make_config('ChairV2', qmul_root))
    assert len(train) == 6 and len(set(train.photo_names)) == 3
    assert len(test.queries) == 4 and test.gallery_names == ['test_x.png', 'ty.png']
    assert set(train.photo_names) == {'chair_a.png', 'chair_b.png', 'c3.png'}   # after the last '_' rule
    item = train[0]
    assert item['sketch'].shape == item['positive'].shape == item['negative'].shape == (3, 32, 32)
    assert item['sketch_boxes'].shape == (3, 4) and item['positive_boxes'].shape == (3, 4)
    for k in ('sketch', 'positive', 'negative'):
        assert boxes_inside(item[f'{k}_boxes'], 32)
    q = test.queries[3]
    assert q['target'] == 1 and test.query_names[3] == '/test/ty_2'
    g = test.gallery[1]
    assert g['photo'].shape == (3, 32, 32) and g['photo_boxes'].tolist()[0] == [0, 0, 32, 32]
    assert test.query_image(0).size == (256, 256) and test.gallery_image(1).size == (48, 80)
    batch = dataset.collate([train[i] for i in range(4)])
    assert batch['positive_mask'].shape == (4, 3)


def test_triplet_is_flipped_as_a_whole(qmul_root):
    refs = {}
    for p in (0.0, 1.0):
        train, _ = dataset.build_datasets(make_config('ChairV2', qmul_root, '--flip_prob', str(p)))
        refs[p] = [(train[i]['sketch'], train[i]['positive']) for i in range(len(train))]
    train, _ = dataset.build_datasets(make_config('ChairV2', qmul_root, '--flip_prob', '0.5'))
    torch.manual_seed(0)
    seen = set()
    for _ in range(6):
        for i in range(len(train)):
            item = train[i]
            flips = [next(p for p in (0.0, 1.0) if torch.equal(item[k], refs[p][i][j]))
                     for j, k in enumerate(('sketch', 'positive'))]
            assert flips[0] == flips[1]
            seen.add(flips[0])
    assert seen == {0.0, 1.0}


def test_triplet_negative_is_never_the_positive_photo(qmul_root):
    train, _ = dataset.build_datasets(make_config('ChairV2', qmul_root))
    torch.manual_seed(0)
    seen = set()
    for i in [0, 1, 2, 3, 4, 5] * 30:
        neg = train.negative_photo(i)
        assert neg != train.photo_names[i]
        seen.add((i, neg))
    assert len(seen) == 12   # every other photo gets drawn


def test_num_regions_and_sketch_detail(qmul_root):
    train, test = dataset.build_datasets(make_config('ChairV2', qmul_root, num_regions=2, sketch_detail='coarse++'))
    assert train[0]['positive_boxes'].shape == (2, 4)
    assert train[0]['sketch_boxes'].shape == (1, 4)
    assert test.queries[0]['sketch_boxes'].shape == (1, 4)


def test_summary_counts_and_fewer_boxes(qmul_root, capsys):
    table = pickle.loads((qmul_root / layouts.BOX_PICKLE.format('ChairV2')).read_bytes())
    table['c3.png'] = table['c3.png'][:1] + [[-5, 10, 30, 40], [5, 5, 5, 40]]  # clamp + zero area
    (qmul_root / layouts.BOX_PICKLE.format('ChairV2')).write_bytes(pickle.dumps(table))
    assert prepare.main(['dataset', '--dataset', 'ChairV2', '--data_root', str(qmul_root), '--summary']) == 0
    out = capsys.readouterr().out
    assert 'train: 6 sketches / 3 photos' in out and 'test:  4 sketches / 2 photos' in out
    assert 'min 3 / median 3 / max 3' in out
    assert 'photos with fewer than 16 boxes: 5' in out
    assert 'boxes clamped to the image: 1' in out and 'zero-area boxes dropped: 1' in out


def test_slightly_off_canvas_sketch_is_clamped_and_reported(qmul_root):
    path = qmul_root / 'ChairV2' / 'ChairV2_Coordinate'
    data = pickle.loads(path.read_bytes())
    data['/train/c3_1'][0, :2] = [-4, 258]
    path.write_bytes(pickle.dumps(data))
    args = make_config('ChairV2', qmul_root)
    index = dataset.load_index(args)
    assert index.repairs['vector sketch coordinates clamped to the canvas'] == 1
    assert 'clamped to the canvas: 1' in dataset.format_summary(index, args)


def test_missing_box_pickle_runs_selective_search_and_caches(tmp_path):
    root = write_qmul(tmp_path, boxes=False)
    index = dataset.load_index(make_config('ChairV2', root))
    cache = root / layouts.BOX_PICKLE.format('ChairV2')
    table = pickle.loads(cache.read_bytes())
    assert set(table) == {f'{p}.png' for p in ('chair_a', 'chair_b', 'c3', 'test_x', 'ty')}
    for name, boxes in table.items():
        W, H = Image.open(root / 'ChairV2' / 'photo' / name).size
        assert boxes[0] == [0, 0, W, H] and 1 <= len(boxes) <= 16
        assert all(isinstance(v, int) for b in boxes for v in b)
        assert all(b[2] - b[0] >= 10 and b[3] - b[1] >= 10 and 0 <= b[0] and b[2] <= W and b[3] <= H for b in boxes)
    assert any('selective-search' in n for n in index.notes)
    mtime = cache.stat().st_mtime_ns
    dataset.load_index(make_config('ChairV2', root))   # second run reads the cache
    assert cache.stat().st_mtime_ns == mtime


def test_precompute_boxes_cli(tmp_path, capsys):
    (tmp_path / 'ph' / 'sub').mkdir(parents=True)
    photo_image((64, 48), (200, 30, 30)).save(tmp_path / 'ph' / 'a.png')
    photo_image((50, 50), (30, 200, 30)).save(tmp_path / 'ph' / 'sub' / 'b.jpg')
    out = tmp_path / 'boxes.pickle'
    assert prepare.main(['proposals', str(tmp_path / 'ph'), str(out)]) == 0
    table = pickle.loads(out.read_bytes())
    assert set(table) == {'a.png', 'sub/b.jpg'} and table['a.png'][0] == [0, 0, 64, 48]
    assert proposals.selective_search(Image.open(tmp_path / 'ph' / 'a.png')) == table['a.png']  # deterministic


# ----------------------------------------------------------------------------- errors, one each
def edit_pickle(path, fn):
    data = pickle.loads(path.read_bytes())
    fn(data)
    path.write_bytes(pickle.dumps(data))


def expect_error(args, *fragments):
    with pytest.raises(DatasetError) as e:
        dataset.build_datasets(args)
    for f in fragments:
        assert str(f) in str(e.value), str(e.value)


def test_error_missing_photo(qmul_root):
    (qmul_root / 'ChairV2' / 'photo' / 'c3.png').unlink()
    expect_error(make_config('ChairV2', qmul_root), 'c3.png', 'missing photo')


def test_error_missing_boxes(qmul_root):
    edit_pickle(qmul_root / layouts.BOX_PICKLE.format('ChairV2'), lambda d: d.pop('ty.png'))
    expect_error(make_config('ChairV2', qmul_root), layouts.BOX_PICKLE.format('ChairV2'), "'ty.png'")


@pytest.mark.parametrize('bad', [[], [[1, 2, 3]], [[5, 5, 5, 9], [70, 70, 90, 90]], 'nonsense'])
def test_error_degenerate_boxes(qmul_root, bad):
    edit_pickle(qmul_root / layouts.BOX_PICKLE.format('ChairV2'), lambda d: d.update({'ty.png': bad}))
    expect_error(make_config('ChairV2', qmul_root), layouts.BOX_PICKLE.format('ChairV2'), "'ty.png'")


@pytest.mark.parametrize('points,problem', [(np.zeros((0, 3)), 'empty'), (np.array([[5.0, 5, 1]]), 'one point'),
                                            (np.array([[5.0, 5, 0], [900, 5, 1]]), 'off the 256 canvas')])
def test_error_bad_vector_sketch(qmul_root, points, problem):
    edit_pickle(qmul_root / 'ChairV2' / 'ChairV2_Coordinate', lambda d: d.update({'/train/c3_1': points}))
    expect_error(make_config('ChairV2', qmul_root), 'ChairV2_Coordinate', '/train/c3_1', problem)


def test_error_corrupt_photo(qmul_root):
    (qmul_root / 'ChairV2' / 'photo' / 'c3.png').write_bytes(b'not a png at all')
    expect_error(make_config('ChairV2', qmul_root), 'c3.png', 'not a readable image')
    good = (qmul_root / 'ChairV2' / 'photo' / 'ty.png').read_bytes()
    (qmul_root / 'ChairV2' / 'photo' / 'c3.png').write_bytes(good[:len(good) // 2])   # truncated
    expect_error(make_config('ChairV2', qmul_root), 'c3.png')


def test_error_key_without_split(qmul_root):
    edit_pickle(qmul_root / 'ChairV2' / 'ChairV2_Coordinate', lambda d: d.update({'/val/c3_9': vector_sketch()}))
    expect_error(make_config('ChairV2', qmul_root), "'/val/c3_9'", '/train/')


def test_error_unknown_dataset_and_wrong_root(qmul_root, tmp_path):
    expect_error(make_config('ChairV2', qmul_root, dataset='Nope'), "unknown dataset 'Nope'")
    expect_error(make_config('ChairV2', tmp_path / 'nowhere'), 'nowhere', 'does not exist')
    expect_error(make_config('ShoeV2', qmul_root), 'ShoeV2', 'no such folder')


def test_cli_error_is_clean_and_exits_2(tmp_path, capsys):
    assert prepare.main(['dataset', '--dataset', 'ChairV2', '--data_root', str(tmp_path / 'nowhere'), '--summary']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'Traceback' not in err and 'nowhere' in err


# ----------------------------------------------------------------------------- SWIRE layout
def test_swire_loader(swire_root):
    args = make_config('SWIRE', swire_root)
    train, test = dataset.build_datasets(args)
    assert len(train) == 6 and len(test.queries) == 2 and len(test.gallery) == 1
    item = train[0]
    assert item['sketch'].shape == (3, 32, 32)
    # whole image + toolbar + three list boxes (10-12 px apart > the 1 % merge gap of 1.6 px)
    raw_img, sboxes = layouts.render_sketch(train.records[0], args.style)
    assert sboxes[0].tolist() == [0, 0, 90, 160] and len(sboxes) == 5
    assert np.asarray(raw_img)[0, 0, 0] == 255 and np.asarray(raw_img)[4, 40, 0] < 128   # inverted: dark on white
    for k in ('sketch', 'positive', 'negative'):
        assert boxes_inside(item[f'{k}_boxes'], 32)


def test_swire_gui_nodes_tree_and_repairs(swire_root):
    args = make_config('SWIRE', swire_root)
    index = dataset.load_index(args)
    first = f'{sorted(r.photo for r in index.train)[0]}'
    raw = [p for p, rec in index.photos.items()
           if 'activity' in json.loads(rec.path.with_suffix('.json').read_text())][0]
    rec = index.photos[raw]
    s = 90 / 1440
    # BFS: root, toolbar, list, off-screen element (clamped); zero-area dropped; then text, 3 items
    assert rec.boxes[:4].tolist() == [[0, 0, 90, 160], [0, 0, 90, 20], [0, 20, 90, 160],
                                      [1000 * s, 150, 90, 160]]
    assert len(rec.boxes) == 8
    assert index.gui_tree(raw) == [-1, 0, 0, 0, 1, 2, 2, 2]
    assert index.repairs['zero-area GUI elements dropped'] == 1
    assert index.repairs['GUI element bounds clamped to the screen'] == 1
    assert index.repairs['null children entries ignored'] == 1
    summary = dataset.format_summary(index, args)
    assert 'zero-area GUI elements dropped: 1' in summary and 'min 5 / median 5 / max 5' in summary
    short = dataset.load_index(make_config('SWIRE', swire_root, num_regions=3))
    assert all(len(p.boxes) == 3 for p in short.photos.values()) and short.gui_tree(first) == [-1, 0, 0]


def test_swire_split_is_stable():
    assert [layouts.swire_split(str(i)) for i in range(8)] == [layouts.swire_split(str(i)) for i in range(8)]
    share = np.mean([layouts.swire_split(f'{i}') == 'test' for i in range(2000)])
    assert 0.17 < share < 0.23


def test_swire_errors(swire_root):
    gui = swire_root / 'SWIRE' / 'combined'
    victim = sorted(gui.glob('*.json'))[0]
    victim.write_text('{broken')
    expect_error(make_config('SWIRE', swire_root), victim.name, 'JSON')
    victim.unlink()
    expect_error(make_config('SWIRE', swire_root), victim.name, 'missing')


def test_swire_blank_sketch_is_an_error(swire_root):
    path = sorted((swire_root / 'SWIRE' / 'sketches').glob('*.jpg'))[0]
    Image.new('L', (90, 160), 0).save(path)
    expect_error(make_config('SWIRE', swire_root), path.name, 'no ink')


# ----------------------------------------------------------------------------- Folder layout
def test_folder_loader_all_sketch_kinds(folder_root):
    args = make_config('Folder', folder_root)
    train, test = dataset.build_datasets(args)
    assert len(train) == 3 and len(test.queries) == 1 and test.gallery_names == ['photos/p2.png']
    by_name = {r.name: r for r in train.records + test.records}
    raster = {}
    for name in ('sketches/dark.png', 'sketches/light.png', 'sketches/alpha.png'):
        img, boxes = layouts.render_sketch(by_name[name], args.style)
        raster[name] = boxes.tolist()
        assert np.asarray(img)[0, 0, 0] == 255 and np.asarray(img)[10, 10, 0] < 128
    assert raster['sketches/dark.png'] == raster['sketches/light.png'] == raster['sketches/alpha.png']
    assert raster['sketches/dark.png'][0] == [0, 0, 100, 80] and len(raster['sketches/dark.png']) == 3
    assert len(layouts.render_sketch(by_name['sketches/vec.npy'], args.style)[1]) == 3   # strokes
    item = test.queries[0]
    assert item['sketch'].shape == (3, 32, 32) and item['target'] == 0


def test_folder_selective_search_cache_filled(folder_root):
    cache = folder_root / layouts.FOLDER_BOX_CACHE
    table = json.loads(cache.read_text())
    del table['photos']['photos/p1.png']
    cache.write_text(json.dumps(table))
    dataset.load_index(make_config('Folder', folder_root))
    table = json.loads(cache.read_text())['photos']
    assert table['photos/p1.png']['boxes'][0] == [0, 0, 64, 64] and len(table) == 3


def test_folder_errors(folder_root):
    csv = folder_root / 'pairs.csv'
    text = csv.read_text()
    csv.write_text(text.replace('split', 'part', 1))
    expect_error(make_config('Folder', folder_root), 'pairs.csv', 'missing column(s) split')
    csv.write_text(text.replace('photos/p1.png', 'photos/nothere.png'))
    expect_error(make_config('Folder', folder_root), 'nothere.png', 'missing photo')
    csv.write_text(text.replace(',test', ',val'))
    expect_error(make_config('Folder', folder_root), 'pairs.csv line 4', 'split')
    csv.unlink()
    expect_error(make_config('Folder', folder_root), 'pairs.csv', 'missing')


def test_folder_corrupt_sketch_image(folder_root):
    (folder_root / 'sketches' / 'dark.png').write_bytes(b'\x89PNG garbage')
    expect_error(make_config('Folder', folder_root), 'dark.png', 'cannot decode image')


# ----------------------------------------------------------------------------- embedded datasets
def test_build_datasets_on_small_synthetic(tmp_path):
    pytest.importorskip('synthetic')
    small = {'Synthetic': ['train_photos=3', 'test_photos=2', 'sketches_per_photo=2'],
             'SyntheticGUI': ['screens=10', 'sketches_per_screen=1']}
    for name, n_train, n_test in (('Synthetic', 6, 4), ('SyntheticGUI', None, None)):
        train, test = dataset.build_datasets(make_config(name, tmp_path, '--synthetic_size', *small[name]))
        if n_train:
            assert (len(train), len(test.queries)) == (n_train, n_test)
        batch = dataset.collate([train[0], train[1]])
        assert batch['sketch'].shape == (2, 3, 32, 32) and batch['positive_boxes'].shape[2] == 4
        for k in ('sketch', 'positive', 'negative'):
            b, m = batch[f'{k}_boxes'], batch[f'{k}_mask']
            assert boxes_inside(b[m], 32)
        q = dataset.collate([test.queries[i] for i in range(len(test.queries))])
        assert q['target'].max() < len(test.gallery)


def test_photo_edges_trace_the_outline():
    img = Image.new('RGB', (256, 256), (235, 235, 235))
    ImageDraw.Draw(img).rectangle([64, 80, 191, 175], fill=(120, 40, 30))
    edges = np.asarray(transforms.photo_edges(img).convert('L'))
    assert edges.shape == (256, 256)
    ink = edges < 128
    assert ink[80, 100:150].all() and ink[100:150, 64].all()     # on the border: lines
    assert not ink[120:140, 100:150].any()                       # inside: blank
    assert not ink[:60].any() and not ink[200:].any()            # background: blank


REAL = os.environ.get('FGSBIR_DATA')


@pytest.mark.skipif(not REAL or not os.path.isdir(os.path.join(REAL or '', 'ChairV2')),
                    reason='FGSBIR_DATA (the folder holding ChairV2/) is not set')
def test_real_chairv2():
    args = make_config('ChairV2', REAL, '--image_size', '224')
    index = dataset.load_index(args)
    assert (len(index.train), len({r.photo for r in index.train})) == (952, 300)
    assert (len(index.test), len({r.photo for r in index.test})) == (323, 100)
    nodes = [r.nodes for r in index.train + index.test]
    assert min(nodes) == 1 and max(nodes) == 15 and not index.repairs
    train, test = dataset.TripletDataset(index, args), dataset.RetrievalData(index, args)
    torch.manual_seed(0)
    item = train[0]
    assert item['sketch'].shape == item['positive'].shape == (3, 224, 224)
    assert item['positive_boxes'].shape == (16, 4)
    for k in ('sketch', 'positive', 'negative'):
        assert boxes_inside(item[f'{k}_boxes'], 224)
    big = [i for i, n in enumerate(test.gallery_names) if index.photos[n].size == (500, 500)]
    g = test.gallery[big[0]] if big else test.gallery[0]
    assert g['photo_boxes'][0].tolist() == [0, 0, 224, 224] and boxes_inside(g['photo_boxes'], 224)
    assert len(test.gallery) == 100 and len(test.queries) == 323


@pytest.mark.skipif(not REAL or not os.path.isdir(os.path.join(REAL or '', 'ChairV2')),
                    reason='FGSBIR_DATA (the folder holding ChairV2/) is not set')
def test_real_chairv2_validation_split():
    """--validation 0.2: about a fifth of the 300 training photos with all their sketches, never a
    test photo, the same photos on every call (an md5 of the names)."""
    config = make_config('ChairV2', REAL, '--validation', '0.2')
    full, index = dataset.load_index(make_config('ChairV2', REAL)), dataset.load_index(config)
    val_photos, train_photos = {r.photo for r in index.test}, {r.photo for r in index.train}
    assert 45 <= len(val_photos) <= 75 and not val_photos & train_photos
    assert val_photos | train_photos == {r.photo for r in full.train}
    assert len(index.test) + len(index.train) == len(full.train)
    assert not val_photos & {r.photo for r in full.test}
    assert {r.photo for r in dataset.load_index(config).test} == val_photos


def test_validation_split_of_a_small_dataset(qmul_root):
    index = dataset.load_index(make_config('ChairV2', qmul_root, '--validation', '0.3'))
    held = {r.photo for r in index.test}
    assert held and held < {'chair_a.png', 'chair_b.png', 'c3.png'}
    assert all(r.photo not in held for r in index.train)
    with pytest.raises(DatasetError, match='holds out 0 of the 3'):
        dataset.load_index(make_config('ChairV2', qmul_root, '--validation', '0.0001'))


def test_images_carry_keys_of_their_pixels(qmul_root):
    """Every image an item gives has a key (dataset.image_key) that names its pixels: equal images,
    equal keys; a mirrored one gets '+flip'."""
    train, test = dataset.build_datasets(make_config('ChairV2', qmul_root, '--flip_prob', '1'))
    item = train[0]
    for k in ('sketch', 'positive', 'negative'):
        assert item[f'{k}_key'].endswith('+flip')
    again = train[0]
    assert item['positive_key'] == again['positive_key'] and item['sketch_key'] != item['positive_key']
    g = test.gallery[0]
    assert g['photo_key'] == dataset.image_key((g['photo'] * 255).round().to(torch.uint8))
