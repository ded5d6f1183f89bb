"""Text records a user (or an editor, or a crash) can change: pairs.csv, RICO view hierarchies and
tables.py's stored results (issue 15). Each ends in one clear line naming the file and line, or in
the right result: a duplicate column, blank lines, a symbolic-link alias of a test photo, a RICO tree
nested 100k deep or with 10^400 bounds, a truncated or edited done.json (the row is run again), a
garbage checkpoint under a table."""
import json
import shutil

import pytest
from conftest import make_config, write_folder, write_swire
from test_trust import TINY

import layouts
import main
import tables
from files import DatasetError


def load(root, name='Folder'):
    return layouts.load_index(name, root, 16, make_config(name, root).style)


# ----------------------------------------------------------------------------- pairs.csv
def test_duplicate_column_is_refused_not_the_last_taken(tmp_path):
    root = write_folder(tmp_path)
    lines = (root / 'pairs.csv').read_text().splitlines()
    (root / 'pairs.csv').write_text('\n'.join([lines[0] + ',sketch'] + [x + ',sketches/vec.npy' for x in lines[1:]]))
    with pytest.raises(DatasetError, match=r'pairs\.csv: column\(s\) sketch appear twice in the header'):
        load(root)


def test_error_line_numbers_count_file_lines_with_blank_lines(tmp_path):
    root = write_folder(tmp_path)
    lines = (root / 'pairs.csv').read_text().splitlines()
    lines[3] = lines[3].replace(',test', ',tset')           # the 4th line of the file: the 3rd row
    (root / 'pairs.csv').write_text('\n\n'.join(lines) + '\n')   # a blank line after every line
    with pytest.raises(DatasetError, match=r"pairs\.csv line 7: split must be train or test, got 'tset'"):
        load(root)


def test_symlinked_alias_of_a_test_photo_is_the_same_photo(tmp_path):
    root = write_folder(tmp_path)
    (root / 'alias').symlink_to(root / 'photos', target_is_directory=True)
    text = (root / 'pairs.csv').read_text().replace('sketches/dark.png,photos/p0.png,train',
                                                    'sketches/dark.png,alias/p2.png,train')
    (root / 'pairs.csv').write_text(text)        # p2 is the test photo of alpha.png
    with pytest.raises(DatasetError, match=r"line 4: photo 'photos/p2.png' is in both splits .*"
                                           r"train at line 2 as 'alias/p2.png', the same file"):
        load(root)


# ----------------------------------------------------------------------------- RICO JSON
def rico_json(root):
    return sorted((root / 'SWIRE' / 'combined').glob('*.json'))[0]


def test_rico_tree_nested_100k_deep_is_one_line(tmp_path):
    root = write_swire(tmp_path)
    depth = 100_000
    rico_json(root).write_text('{"bounds": [0, 0, 1440, 2560], "children": [' * depth + '{}' + ']}' * depth)
    with pytest.raises(DatasetError, match=r'\.json: cannot read JSON \(nested too deeply\)'):
        load(root, 'SWIRE')


def test_rico_bounds_beyond_float_range_are_one_line(tmp_path):
    root = write_swire(tmp_path)
    rico_json(root).write_text('{"bounds": [0, 0, 1' + '0' * 400 + ', 2560], "children": []}')
    with pytest.raises(DatasetError, match=r'\.json: a node has no valid "bounds"'):
        load(root, 'SWIRE')


# ----------------------------------------------------------------------------- tables.py records
@pytest.mark.parametrize('record, problem', [
    ({'acc@1': 0.5, 'acc@10': 1.0, 'mean_rank': 2.0}, None),
    ({'acc@1': float('inf'), 'acc@10': 1.0, 'mean_rank': 2.0}, 'acc@1 is inf, not a finite number'),
    ({'acc@1': 7.0, 'acc@10': 1.0, 'mean_rank': 2.0}, 'not fractions'),
    ({'acc@1': 0.9, 'acc@10': 0.5, 'mean_rank': 2.0}, 'not fractions'),
    ({'acc@1': 0.5, 'acc@10': 1.0, 'mean_rank': 0.0}, 'below 1'),
    ({'acc@1': '0.5', 'acc@10': 1.0, 'mean_rank': 2.0}, "acc@1 is '0.5'"),
    ({'acc@10': 1.0, 'mean_rank': 2.0}, 'acc@1 is None'),
    ([0.5], 'a list, not a record'),
])
def test_metrics_problem(record, problem):
    got = tables.metrics_problem(record)
    assert got == problem if problem is None else problem in got


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    data, out = tmp_path_factory.mktemp('data'), tmp_path_factory.mktemp('runs')
    m = main.main(['--data_root', str(data), *TINY, '--output_dir', str(out), '--run_name', 'r', '--max_steps', '1'])
    return data, out / 'r', m


@pytest.mark.parametrize('done', ['{"acc@1": 0.5, "acc@1', '{"acc@1": 1e999, "acc@10": 1, "mean_rank": 1}',
                                  '{"acc@1": 7, "acc@10": 7, "mean_rank": 1}', '[1, 2]', ''])
def test_unreadable_or_out_of_range_done_json_reruns_the_row(finished, tmp_path, capsys, done):
    data, healthy, m = finished
    runs = tables.Runs(['--data_root', str(data), *TINY], tmp_path)
    run = runs.path('row', ['--max_steps', '1'])
    shutil.copytree(healthy, run)
    (run / 'done.json').write_text(done)
    metrics, _ = runs.train('row', ['--max_steps', '1'])
    assert 'running the row again' in capsys.readouterr().out
    assert metrics['acc@1'] == m['acc@1'] and tables.metrics_problem(metrics) is None     # resumed from last.pth
    assert json.loads((run / 'done.json').read_text())['acc@1'] == m['acc@1']


def test_table_over_a_garbage_checkpoint_is_one_line(finished, tmp_path):
    data, healthy, m = finished
    base = ['--data_root', str(data), *TINY]
    run = tables.Runs(base, tmp_path).path('hierarchy', ['--method', 'hierarchy'])
    shutil.copytree(healthy, run)
    (run / 'done.json').write_text(json.dumps(m))
    (run / 'last.pth').write_bytes(b'garbage')
    with pytest.raises(SystemExit) as e:
        tables.main(['kregions', '--kregions_eval_only', '--out', str(tmp_path), *base])
    assert str(e.value.code).startswith('error: ') and 'last.pth: not a readable checkpoint' in str(e.value.code)
