"""Fuzz every on-disk format the project reads (issue 15): random bytes, truncations and bit flips
of a valid file of each kind - checkpoint, gallery index, box caches (Folder and gallery), QMUL
pickles (sketches and boxes), pairs.csv, RICO JSON, vector-sketch .npy, PNG and JPEG - each read by
the function the programs use. Every case must end in the project's own error type or in a correct
result (checked here), never another exception or a crash, within a set time per case; the memory
the whole run adds is bounded too. Seeded, so the cases are the same on every run."""
import resource
import shutil
import signal

import numpy as np
import pytest
import torch
from conftest import make_config, vector_sketch, write_folder, write_qmul, write_swire
from PIL import Image

import checkpoint
import files
import layouts
import options
import proposals
import search
from checkpoint import CheckpointError
from files import DatasetError
from search import GalleryIndex, StaleIndexError

CASES = 36                  # per format: a third random bytes, a third truncations, a third bit flips
SECONDS_PER_CASE = 10       # a generous bound that catches a hang, not a speed target
MEMORY_MB = 1024            # growth of the peak resident memory over the whole fuzz run


def mutations(data, rng, n=CASES):
    """n byte strings from data: random bytes, a truncation, or 1-8 flipped bits, in turn."""
    for i in range(n):
        if i % 3 == 0:
            yield rng.integers(0, 256, rng.integers(0, 2 * len(data) + 1), dtype=np.uint8).tobytes()
        elif i % 3 == 1:
            yield data[:rng.integers(0, len(data))]
        else:
            b = bytearray(data)
            for pos in rng.integers(0, 8 * len(b), rng.integers(1, 9)):
                b[pos // 8] ^= 1 << (pos % 8)
            yield bytes(b)


class Hang(Exception):
    pass


def alarm(*_):
    raise Hang(f'a case ran past {SECONDS_PER_CASE} s')


def in_image(boxes, size):
    b = np.asarray(boxes, dtype=np.float64)
    W, H = size
    return (np.isfinite(b).all() and (b[:, :2] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
            and (b[:, 2:] > b[:, :2]).all())


def check_index(index):
    """A DataIndex read from fuzzed files is still a valid one."""
    for rec in index.photos.values():
        assert in_image(rec.boxes, rec.size) and 1 <= len(rec.boxes) <= index.num_regions
    for r in index.train + index.test:
        assert r.points is None or (np.isfinite(r.points).all() and r.points.shape[1] == 3)
        assert r.photo in index.photos
    return True


# ----------------------------------------------------------------------------- the formats
# Each: (a valid file to mutate, read(path) -> result, check(result)); the errors each may raise.
def fmt_checkpoint(root):
    defaults = options.parse_args('main', [])
    path = root / 'c.pth'
    checkpoint.save_checkpoint(path, args=vars(defaults), model={'w': torch.arange(6.0)}, step=3)
    return path, lambda p: checkpoint.load_checkpoint(p, defaults), \
        lambda r: all(torch.is_tensor(v) for v in r[1]['model'].values()), (CheckpointError,)


def fmt_index(root):
    rows = [[n, 10, 20, 4, 5] for n in 'abc']
    path = root / 'index.pt'
    GalleryIndex(['a', 'b', 'c'], {'nodes': torch.rand(3, 4, 8), 'mask': torch.ones(3, 4, dtype=torch.bool)},
                 'id', rows).save(path)
    return path, lambda p: GalleryIndex.load(p, 'id', rows), \
        lambda r: r.names == ['a', 'b', 'c'] and all(len(v) == 3 for v in r.features.values()), (StaleIndexError,)


def fmt_box_cache(root, hint=proposals.PRECOMPUTE_HINT):
    folder = write_folder(root / ('folder' if hint else 'gallery'))
    photos = {f'photos/p{i}.png': folder / f'photos/p{i}.png' for i in range(3)}
    path = folder / layouts.FOLDER_BOX_CACHE

    def read(p):
        return proposals.BoxCache(p, hint).boxes(photos)[0]
    return path, read, lambda t: all(in_image(t[n], (64, 64)) and list(t[n][0]) == [0, 0, 64, 64] for n in photos), \
        (DatasetError,)


def fmt_gallery_box_cache(root):
    return fmt_box_cache(root, hint=None)


def qmul(root, which):
    folder = write_qmul(root / which)
    boxes = folder / layouts.BOX_PICKLE.format('ChairV2')
    path = folder / 'ChairV2' / 'ChairV2_Coordinate' if which == 'coord' else boxes

    def read(p):
        return layouts.load_index('ChairV2', folder, 16, make_config('ChairV2', folder).style)
    return path, read, check_index, (DatasetError,)


def fmt_qmul_sketches(root):
    return qmul(root, 'coord')


def fmt_qmul_boxes(root):
    return qmul(root, 'boxes')


def fmt_pairs_csv(root):
    folder = write_folder(root / 'csv')

    def read(p):
        return layouts.load_index('Folder', folder, 16, make_config('Folder', folder).style)
    return folder / 'pairs.csv', read, check_index, (DatasetError,)


def fmt_rico_json(root):
    folder = write_swire(root / 'swire')
    path = sorted((folder / 'SWIRE' / 'combined').glob('*.json'))[0]

    def read(p):
        return layouts.gui_nodes(p, (90, 160), 16, layouts.DataIndex('x', folder))
    return path, read, lambda r: in_image(r[0], (90, 160)) and len(r[1]) == len(r[0]), (DatasetError,)


def fmt_npy(root):
    path = root / 'q.npy'
    np.save(path, vector_sketch())
    args = options.parse_args('evaluate', ['--checkpoint', '-', '--image_size', '32'])
    return path, lambda p: search.query_inputs(str(p), args, torch.device('cpu')), \
        lambda r: torch.isfinite(r[1]['boxes']).all() and r[1]['image'].shape == (1, 3, 32, 32), (DatasetError,)


def image_format(root, suffix):
    path = root / f'p{suffix}'
    img = Image.new('RGB', (48, 40), (240, 240, 240))
    img.paste((200, 30, 30), (10, 8, 30, 30))
    img.save(path)

    def read(p):
        return files.image_size(p), files.open_image(p)
    return path, read, lambda r: r[1].mode == 'RGB' and r[1].size == r[0], (DatasetError,)


def fmt_png(root):
    return image_format(root, '.png')


def fmt_jpeg(root):
    return image_format(root, '.jpg')


FORMATS = [fmt_checkpoint, fmt_index, fmt_box_cache, fmt_gallery_box_cache, fmt_qmul_sketches, fmt_qmul_boxes,
           fmt_pairs_csv, fmt_rico_json, fmt_npy, fmt_png, fmt_jpeg]


def test_fuzz_every_on_disk_format(tmp_path, capsys):
    rng = np.random.default_rng(15)
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    old = signal.signal(signal.SIGALRM, alarm)
    outcomes = {}
    try:
        for make in FORMATS:
            root = tmp_path / make.__name__
            root.mkdir()
            path, read, check, errors = make(root)
            good = path.read_bytes()
            assert check(read(path)), f'{make.__name__}: the unmutated file must read correctly'
            keep = root.parent / f'{make.__name__}.keep'
            shutil.copytree(root, keep)      # every case starts from the same folder (a cache may be rewritten)
            counts = outcomes.setdefault(make.__name__, {'error': 0, 'read': 0})
            for k, data in enumerate(mutations(good, rng)):
                shutil.rmtree(root)
                shutil.copytree(keep, root)
                path.write_bytes(data)
                signal.alarm(SECONDS_PER_CASE)
                try:
                    result = read(path)
                except errors:
                    counts['error'] += 1
                    continue
                except Exception as e:    # noqa: BLE001 - the point: any other exception fails
                    pytest.fail(f'{make.__name__} case {k}: {type(e).__name__}: {e}')
                finally:
                    signal.alarm(0)
                assert check(result), f'{make.__name__} case {k}: read without an error but wrong'
                counts['read'] += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    capsys.readouterr()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak0
    assert grown < MEMORY_MB, f'the fuzz run grew the peak memory by {grown:.0f} MB'
    assert sum(c['error'] + c['read'] for c in outcomes.values()) == CASES * len(FORMATS)
    assert all(c['error'] > 0 for c in outcomes.values()), outcomes      # the mutations do reach the checks
