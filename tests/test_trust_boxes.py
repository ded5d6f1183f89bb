"""One checked path for photo boxes from every source (issue 15): proposals.check_boxes - finite,
inside the image after clipping, a positive area, box 0 the whole photo where the format says so.
A QMUL pickle that fails it is an error; a Folder or gallery cache entry that fails it is recomputed
and counted (the README's promise), never used and never a stop."""
import json
import pickle

import numpy as np
import pytest
from conftest import make_config, photo_boxes, write_folder, write_qmul

import dataset
import layouts
import proposals
from files import DatasetError


def read_cache(root):
    return json.loads((root / layouts.FOLDER_BOX_CACHE).read_text())


def write_entry(root, name, boxes):
    data = read_cache(root)
    data['photos'][name]['boxes'] = boxes
    (root / layouts.FOLDER_BOX_CACHE).write_text(json.dumps(data).replace('"NaN"', 'NaN').replace('"Inf"', 'Infinity'))


@pytest.mark.parametrize('bad', [
    'NaN', [[0, 0, 64, 64], ['NaN', 0, 10, 10]], [[0, 0, 64, 64], [0, 0, 'Inf', 10]],   # non-finite: stopped the run
    [[0, 0, 64, 64], [-1e30, -1e30, 1e30, 1e30]][::-1],      # box 0 not the whole photo (a giant box first)
    'boxes', [], [[1, 2, 3]], {'a': 1},                        # not a box list
    [[0, 0, 32, 32], [4, 4, 20, 20]],                          # box 0 made for another size
])
def test_bad_folder_cache_entry_is_recomputed_and_counted(tmp_path, bad):
    root = write_folder(tmp_path)
    write_entry(root, 'photos/p1.png', bad)
    index = layouts.load_index('Folder', root, 16, make_config('Folder', root).style)
    assert index.repairs['bad box cache entries recomputed'] == 1
    boxes = index.photos['photos/p1.png'].boxes
    assert np.isfinite(boxes).all() and boxes[0].tolist() == [0, 0, 64, 64]
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2:] <= 64).all() and (boxes >= 0).all()
    np.testing.assert_array_equal(index.photos['photos/p0.png'].boxes, np.float32(photo_boxes((64, 64))))   # reused
    stored = read_cache(root)['photos']['photos/p1.png']['boxes']
    assert stored == proposals.selective_search(proposals.open_image(root / 'photos/p1.png'))
    assert 'bad box cache entries recomputed: 1' in dataset.format_summary(index, make_config('Folder', root))
    again = layouts.load_index('Folder', root, 16, make_config('Folder', root).style)     # now a good cache
    assert not again.repairs and np.array_equal(again.photos['photos/p1.png'].boxes, boxes)


def test_qmul_pickle_goes_through_the_same_check(tmp_path):
    root = write_qmul(tmp_path)
    box_file = root / layouts.BOX_PICKLE.format('ChairV2')
    table = pickle.loads(box_file.read_bytes())
    table['chair_a.png'] = [[0, 0, 64, 64], [float('nan'), 0, 10, 10]]
    box_file.write_bytes(pickle.dumps(table))
    with pytest.raises(DatasetError, match=r"\['chair_a.png'\].*boxes contain NaN or infinite values"):
        layouts.load_index('ChairV2', root, 16, make_config('ChairV2', root).style)


@pytest.mark.parametrize('raw, size, whole_first, expect', [
    ([[0, 0, 10, 8], [2, 2, 12, 6]], (10, 8), True, [[0, 0, 10, 8], [2, 2, 10, 6]]),    # clamped
    ([[0, 0, 10, 8], [3, 3, 3, 6]], (10, 8), True, [[0, 0, 10, 8]]),                    # zero area dropped
    ([[1, 1, 5, 5]], (10, 8), False, [[1, 1, 5, 5]]),
    ([[1, 1, 5, 5]], (10, 8), True, 'box 0 is'),
    ([[0, 0, 10, 8], [0, 0, 1e309, 1]], (10, 8), True, 'NaN or infinite'),
    ([[0, 0, 10 ** 400, 8]], (10, 8), True, 'non-empty list'),
    ([[20, 20, 30, 30]], (10, 8), False, 'no box has a positive area'),
    ('abcd', (10, 8), False, 'non-empty list'),
])
def test_check_boxes(raw, size, whole_first, expect):
    if isinstance(expect, str):
        with pytest.raises(DatasetError, match=expect):
            proposals.check_boxes(raw, size, 'where', whole_first)
    else:
        boxes, _ = proposals.check_boxes(raw, size, 'where', whole_first)
        assert boxes.tolist() == expect
