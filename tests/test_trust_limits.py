"""Bounded work for any input (issue 15): each input's cost is checked where it is read, with one
line naming the file and the limit - strokes and points of a vector sketch (QMUL pickle, Folder
.npy, --query), the .npy header before the array is allocated, image pixels (a photo and a smaller
limit for a sketch), and the range of every option whose cost grows with its value."""
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import make_config, vector_sketch, write_folder, write_qmul
from PIL import Image

import dataset
import prepare
import files
import options
import search
from files import DatasetError


def many_strokes(n):
    """(2n, 3) x, y, pen: n short strokes on the canvas."""
    i = np.arange(n)
    x = 20 + (i % 200).astype(float)
    start, end = np.stack([x, 30 + i % 150, 0 * i], 1), np.stack([x, 40 + i % 150, 0 * i + 1], 1)
    return np.stack([start, end], 1).reshape(-1, 3)


def query_args(*extra):
    return options.parse_args('evaluate', ['--checkpoint', '-', '--image_size', '64', *extra])


def query(path, *extra):
    return search.query_inputs(str(path), query_args(*extra), torch.device('cpu'))


def test_qmul_sketch_over_the_stroke_limit_is_one_summary_error(tmp_path, capsys):
    root = write_qmul(tmp_path)
    coord = root / 'ChairV2' / 'ChairV2_Coordinate'
    data = pickle.loads(coord.read_bytes())
    data['/train/chair_a_1'] = many_strokes(2000)     # 4000 points: under the point limit, over the stroke one
    coord.write_bytes(pickle.dumps(data))
    assert prepare.main(['dataset', '--dataset', 'ChairV2', '--data_root', str(root), '--summary']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'/train/chair_a_1'" in err[0]
    assert '2000 strokes, more than --max_sketch_strokes 64' in err[0]
    # the limit is an option: raised, the same sketch is read
    assert prepare.main(['dataset', '--dataset', 'ChairV2', '--data_root', str(root), '--max_sketch_strokes', '2000']) == 0


def test_npy_query_over_the_stroke_limit_is_refused_before_any_drawing(tmp_path):
    np.save(tmp_path / 'q.npy', many_strokes(200))
    with pytest.raises(DatasetError, match=r'q\.npy: not a vector sketch \(200 strokes, more than --max_sketch_str'):
        query(tmp_path / 'q.npy')
    img, inputs = query(tmp_path / 'q.npy', '--max_sketch_strokes', '200')
    assert inputs['boxes'].shape[1] == 200     # one node per stroke


def test_folder_npy_over_the_point_limit_names_the_file(tmp_path):
    root = write_folder(tmp_path)
    pts = np.zeros((5000, 3))
    pts[:, 0] = np.linspace(30, 200, 5000)
    pts[:, 1] = 100
    pts[-1, 2] = 1
    np.save(root / 'sketches' / 'vec.npy', pts)
    with pytest.raises(DatasetError, match=r'vec\.npy: 5000 points, more than --max_sketch_points 4096'):
        dataset.build_datasets(make_config('Folder', root))


def test_npy_header_shape_is_checked_before_allocation(tmp_path):
    path = tmp_path / 'huge.npy'
    with open(path, 'wb') as f:     # a 100-byte file whose header claims (10^11, 3) float64: 2.4 TB
        np.lib.format.write_array_header_1_0(f, {'descr': '<f8', 'fortran_order': False, 'shape': (10 ** 11, 3)})
        f.write(b'\0' * 48)
    with pytest.raises(DatasetError, match=r'huge\.npy: 100000000000 points, more than --max_sketch_points'):
        query(path)


@pytest.mark.parametrize('content, why', [
    (b'', 'not a readable .npy file'),                                    # zero bytes: EOFError on main
    (b'\x93NUMPY\x01\x00\x10\x00{"descr": 1}    \n', 'not a readable .npy file'),
])
def test_empty_or_broken_npy_is_one_dataset_error(tmp_path, content, why):
    (tmp_path / 'q.npy').write_bytes(content)
    with pytest.raises(DatasetError, match=why):
        query(tmp_path / 'q.npy')


def test_complex_npy_is_refused_not_truncated_to_its_real_part(tmp_path):
    np.save(tmp_path / 'q.npy', vector_sketch().astype(np.complex128) + 5j)
    with pytest.raises(DatasetError, match='complex128 array; a vector sketch holds real numbers'):
        query(tmp_path / 'q.npy')


def png_header_only(path, width, height):
    """A valid PNG whose header claims width x height (1-bit grey) with a tiny, incomplete image."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))


def test_photo_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    root = write_folder(tmp_path)
    png_header_only(root / 'photos' / 'p0.png', 10000, 10000)      # 10^8 pixels > 8192^2
    with pytest.raises(DatasetError, match=r'p0\.png: 10000x10000 = 100000000 pixels, more than the limit of 67108864'):
        dataset.build_datasets(make_config('Folder', root))


def test_sketch_has_a_smaller_pixel_limit_than_a_photo(tmp_path):
    big = Image.new('L', (4200, 4200), 255)     # 17.6 M pixels: a photo may be this large, a sketch not
    big.paste(0, (100, 100, 300, 110))
    big.save(tmp_path / 's.png')
    assert files.open_image(tmp_path / 's.png').size == (4200, 4200)
    with pytest.raises(DatasetError, match=r's\.png: 4200x4200 = 17640000 pixels, more than the limit of 16777216'):
        query(tmp_path / 's.png')


@pytest.mark.parametrize('option, value', [
    ('--image_size', '20000'), ('--image_size', '1'), ('--merge_gap', '1000'), ('--line_width', '100000'),
    ('--seed', str(10 ** 23)), ('--synthetic_seed', str(2 ** 40)), ('--num_regions', '100000'),
    ('--max_sketch_nodes', '100000'), ('--dim', '1000000'), ('--roi_size', '1000'), ('--batch_size', '10000000'),
    ('--eval_batch_size', '10000000'), ('--pair_chunk', str(10 ** 9)), ('--epochs', str(10 ** 9)),
    ('--figure_queries', '0'), ('--figure_queries', '100000'), ('--workers', '10000'),
    ('--synthetic_size', 'train_photos=100000000'), ('--max_sketch_points', '1'),
])
def test_cost_growing_options_have_a_range(option, value, capsys):
    with pytest.raises(SystemExit) as e:
        options.parse_args('main', [option, value])
    assert e.value.code == 2
    err = [x for x in capsys.readouterr().err.splitlines() if 'error:' in x]
    assert len(err) == 1 and f'argument {option}:' in err[0] and value in err[0], err
