"""Hostile and faulty inputs, one case each: every one ends in one clear line (no traceback),
runs no code it loads, and leaves the last good files untouched.

Divergence, code in data and checkpoints, run folders and writes, option checks, the Folder and
QMUL layouts, corrupt and foreign checkpoints. The CLI cases that must not print a traceback run
the real scripts in a subprocess (`cli`); the others call main / evaluate / dataset in-process.
"""
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, photo_boxes, photo_image, vector_sketch, write_qmul

import checkpoint
import dataset
import evaluate
import files
import layouts
import main
import options
import prepare
import retrieval
from files import DatasetError, SafeUnpickler, WriteError, atomic_write, read_pickle

REPO = Path(__file__).resolve().parents[1]
TINY = ['--synthetic_size', 'train_photos=4', 'test_photos=3', 'sketches_per_photo=2',
        '--image_size', '64', '--dim', '32', '--att_dim', '8', '--batch_size', '4', '--lr', '1e-3',
        '--workers', '0', '--device', 'cpu']


# ----------------------------------------------------------------------------- helpers
class Payload:
    """Unpickling this calls open(marker, 'w'): the marker file appears iff the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def cli(script, *args, timeout=120):
    """Run `python <script> args` in the repository -> (exit code, stdout, stderr)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    p = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def one_error_line(err, *fragments):
    """stderr holds no traceback and exactly one 'error' line, with every fragment in it."""
    assert 'Traceback' not in err, err
    lines = [x for x in err.splitlines() if 'error:' in x]
    assert len(lines) == 1, err
    for f in fragments:
        assert str(f) in lines[0], lines[0]
    return lines[0]


def fails(fn, *fragments):
    """fn() exits with one 'error: ...' line (as the CLI prints it) holding every fragment."""
    with pytest.raises(SystemExit) as e:
        fn()
    msg = str(e.value.code)
    assert msg.startswith('error: ') and '\n' not in msg, msg
    for f in fragments:
        assert str(f) in msg, msg
    return msg


def snapshot(folder):
    """{name: bytes} of the checkpoints in a run folder."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob('*.pth'))}


def no_temp_files(folder):
    return [p.name for p in Path(folder).rglob('*.tmp')] == []


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


@pytest.fixture(scope='module')
def healthy(data_root, tmp_path_factory):
    """A finished 2-step run (best.pth, last.pth) to copy and break."""
    out = tmp_path_factory.mktemp('runs')
    main.main(['--data_root', str(data_root), *TINY, '--output_dir', str(out), '--run_name', 'healthy',
               '--max_steps', '2', '--eval_every', '2'])
    return out / 'healthy'


@pytest.fixture
def run(healthy, tmp_path):
    """A private copy of the healthy run folder."""
    return Path(shutil.copytree(healthy, tmp_path / 'run'))


def edit_checkpoint(path, fn, out=None):
    state = torch.load(path, weights_only=True)
    fn(state)
    torch.save(state, out or path)
    return out or path


# ----------------------------------------------------------------------------- divergence
def test_nan_loss_stops_naming_step_and_lr_and_keeps_checkpoints(run):
    """--resume of a healthy run with --lr 1e10: one line naming the step and the learning rate;
    best.pth and last.pth of the healthy run stay byte for byte."""
    before = snapshot(run)
    msg = fails(lambda: main.main(['--resume', str(run), '--lr', '1e10', '--max_steps', '8']),
                'non-finite', 'at step', 'learning rate 1e+10', str(run))
    assert 'step 3' in msg or 'step 4' in msg, msg
    assert snapshot(run) == before and no_temp_files(run)


def test_nan_loss_at_a_given_step(run, monkeypatch):
    """A loss that turns NaN at step 3 stops there, before the weights change."""
    import losses
    real, calls = losses.TripletLoss.__call__, []

    def nan_on_first(self, *a, **k):
        calls.append(1)
        loss = real(self, *a, **k)
        return loss * float('nan') if len(calls) == 1 else loss
    monkeypatch.setattr(losses.TripletLoss, '__call__', nan_on_first)
    before = snapshot(run)
    fails(lambda: main.main(['--resume', str(run), '--max_steps', '4']),
          'non-finite loss (nan) at step 3 (learning rate 0.001)')
    assert snapshot(run) == before


def nan_evaluate(real):
    def evaluate_(*a, **k):
        m, scores, targets, ranks = real(*a, **k)
        scores = torch.full_like(scores, float('nan'))
        m, ranks = retrieval.retrieval_metrics(scores, targets)
        return m, scores, targets, ranks
    return evaluate_


def test_nan_distances_in_training_evaluation_stop_and_keep_best(run, monkeypatch):
    monkeypatch.setattr(retrieval, 'evaluate', nan_evaluate(retrieval.evaluate))
    before = snapshot(run)
    fails(lambda: main.main(['--resume', str(run), '--max_steps', '4']),
          'non-finite distances at the evaluation of step 4')
    assert snapshot(run) == before


def test_nan_distances_rank_last():
    dist = torch.tensor([[float('nan')] * 4, [0.1, float('nan'), 0.3, float('inf')], [0.5, 0.2, 0.9, 0.4]])
    m, ranks = retrieval.retrieval_metrics(dist, torch.tensor([0, 0, 1]))
    assert ranks.tolist() == [4, 1, 1] and m['acc@1'] == pytest.approx(2 / 3) and m['nonfinite'] == 6
    m, _ = retrieval.retrieval_metrics(torch.full((3, 5), float('nan')), torch.tensor([0, 1, 2]))
    assert m['acc@1'] == 0 and m['mean_rank'] == 5


def test_evaluate_on_a_diverged_checkpoint_scores_zero(run, data_root):
    """A checkpoint whose weights are NaN: acc@1 0 and the last rank, never 100 %."""
    nan = edit_checkpoint(run / 'last.pth', lambda s: [v.fill_(float('nan')) for v in s['model'].values()
                                                       if v.is_floating_point()], run / 'nan.pth')
    m = evaluate.main(['--checkpoint', str(nan), '--data_root', str(data_root)])
    assert m['acc@1'] == 0 and m['nonfinite'] > 0 and m['mean_rank'] == m['gallery']


def test_best_is_replaced_only_by_a_better_result(run):
    """A resumed run that never beats the stored best acc@1 leaves best.pth alone."""
    edit_checkpoint(run / 'last.pth', lambda s: s.update(best_acc1=1.0))
    best = (run / 'best.pth').read_bytes()
    main.main(['--resume', str(run), '--max_steps', '4'])
    assert (run / 'best.pth').read_bytes() == best
    assert torch.load(run / 'last.pth', weights_only=True)['step'] == 4


# ----------------------------------------------------------------------------- code in checkpoints
def test_checkpoint_payload_would_run_with_plain_torch_load(run, tmp_path):
    """The control: the payload below is real (a plain torch.load runs it)."""
    marker = tmp_path / 'ran'
    edit_checkpoint(run / 'last.pth', lambda s: s.update(metrics=Payload(marker)), tmp_path / 'p.pth')
    torch.load(tmp_path / 'p.pth', weights_only=False)
    assert marker.exists()


def test_checkpoint_payload_refused_by_resume_and_evaluate(run, data_root, tmp_path):
    marker = tmp_path / 'ran'
    edit_checkpoint(run / 'last.pth', lambda s: s.update(metrics=Payload(marker)))
    before = snapshot(run)
    fails(lambda: main.main(['--resume', str(run)]), 'last.pth', 'not a readable checkpoint')
    fails(lambda: evaluate.main(['--checkpoint', str(run / 'last.pth'), '--data_root', str(data_root)]),
          'last.pth', 'not a readable checkpoint')
    assert not marker.exists() and snapshot(run) == before


def test_evaluate_cli_payload_no_traceback(run, data_root, tmp_path):
    marker = tmp_path / 'ran'
    edit_checkpoint(run / 'best.pth', lambda s: s['model'].update(extra=Payload(marker)))
    code, _, err = cli('evaluate.py', '--checkpoint', run / 'best.pth', '--data_root', data_root)
    assert code == 1 and not marker.exists()
    one_error_line(err, 'best.pth', 'not a readable checkpoint')


# ----------------------------------------------------------------------------- code in dataset pickles
def test_safe_unpickler_reads_what_the_datasets_hold(tmp_path):
    data = {'/train/a_1': np.arange(12, dtype=np.float64).reshape(4, 3), 'b.png': [[0, 0, 5, 5], (1, 2, 3, 4)],
            'od': OrderedDict(x={1, 2}), 'scalar': np.float32(1.5), 'ints': np.int64(3), 'f': frozenset('ab'),
            'objects': np.array([np.zeros(2), None], dtype=object)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / 'p').write_bytes(pickle.dumps(data, protocol=protocol))
        back = read_pickle(tmp_path / 'p')
        assert back['b.png'] == data['b.png'] and back['od'] == data['od'] and back['scalar'] == 1.5
        np.testing.assert_array_equal(back['/train/a_1'], data['/train/a_1'])


@pytest.mark.parametrize('victim', ['coordinate', 'boxes'])
def test_dataset_pickle_payload_refused(tmp_path, capsys, victim):
    root = write_qmul(tmp_path / 'd')
    marker = tmp_path / 'ran'
    path = (root / 'ChairV2' / 'ChairV2_Coordinate' if victim == 'coordinate'
            else root / layouts.BOX_PICKLE.format('ChairV2'))
    data = pickle.loads(path.read_bytes())
    data[sorted(data)[0]] = Payload(marker)
    path.write_bytes(pickle.dumps(data))
    assert prepare.main(['dataset', '--dataset', 'ChairV2', '--data_root', str(root), '--summary']) == 2
    one_error_line(capsys.readouterr().err, path.name, 'refused to load')
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError), open(path, 'rb') as f:   # refused at the global
        SafeUnpickler(f).load()
    assert not marker.exists()


def test_dataset_cli_payload_no_traceback(tmp_path):
    root = write_qmul(tmp_path / 'd')
    marker = tmp_path / 'ran'
    coord = root / 'ChairV2' / 'ChairV2_Coordinate'
    coord.write_bytes(pickle.dumps({'/train/chair_a_1': Payload(marker)}))
    code, _, err = cli('prepare.py', 'dataset', '--dataset', 'ChairV2', '--data_root', root, '--summary')
    assert code == 2 and not marker.exists()
    one_error_line(err, 'ChairV2_Coordinate', 'refused to load')


def test_folder_box_cache_is_json_and_an_old_pickle_cache_never_loads(folder_root, tmp_path):
    marker = tmp_path / 'ran'
    old = folder_root / 'Folder_Select_Search_boxes_min10_topN16.pickle'     # the cache's former name
    old.write_bytes(pickle.dumps({'photos/p0.png': Payload(marker)}))
    (folder_root / layouts.FOLDER_BOX_CACHE).unlink()
    dataset.load_index(make_config('Folder', folder_root))
    cache = json.loads((folder_root / layouts.FOLDER_BOX_CACHE).read_text())
    assert set(cache['photos']) == {'photos/p0.png', 'photos/p1.png', 'photos/p2.png'}
    assert set(cache['photos']['photos/p0.png']) == {'bytes', 'mtime_ns', 'boxes'}
    assert not marker.exists()


def test_folder_box_cache_follows_a_replaced_photo(folder_root):
    cache = folder_root / layouts.FOLDER_BOX_CACHE
    index = dataset.load_index(make_config('Folder', folder_root))
    assert index.photos['photos/p0.png'].boxes[0].tolist() == [0, 0, 64, 64]
    stamp = cache.stat().st_mtime_ns
    dataset.load_index(make_config('Folder', folder_root))            # unchanged photos: cache reused
    assert cache.stat().st_mtime_ns == stamp
    photo_image((80, 48), (10, 200, 10)).save(folder_root / 'photos' / 'p0.png')
    index = dataset.load_index(make_config('Folder', folder_root))
    assert index.photos['photos/p0.png'].size == (80, 48)
    assert index.photos['photos/p0.png'].boxes[0].tolist() == [0, 0, 80, 48]
    assert any('computed for 1 photos' in n for n in index.notes)
    # Same bytes, new modification time: recomputed too.
    os.utime(folder_root / 'photos' / 'p1.png', ns=(1, 1))
    index = dataset.load_index(make_config('Folder', folder_root))
    assert any('computed for 1 photos' in n for n in index.notes)


@pytest.mark.parametrize('text,fragment', [('{"version": 1, "photos": {"photos/p0.png": 5}}', None),
                                           ('{"version": 1, "photos": {"photos/p0.png": {"bytes": 1}}}', None),
                                           ('[1, 2]', 'unreadable box cache'),
                                           ('not json', 'unreadable box cache')])
def test_folder_box_cache_edited(folder_root, text, fragment):
    (folder_root / layouts.FOLDER_BOX_CACHE).write_text(text)
    if fragment is None:     # a bad entry is recomputed
        index = dataset.load_index(make_config('Folder', folder_root))
        assert index.photos['photos/p0.png'].boxes[0].tolist() == [0, 0, 64, 64]
    else:
        with pytest.raises(DatasetError, match=fragment):
            dataset.load_index(make_config('Folder', folder_root))


# ----------------------------------------------------------------------------- run folders, writes
def test_existing_run_name_is_refused(data_root, tmp_path):
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'metrics.jsonl').write_text('kept\n')
    fails(lambda: main.main(['--data_root', str(data_root), *TINY, '--output_dir', str(tmp_path),
                             '--run_name', 'taken']), 'taken', 'exists', '--resume')
    assert os.listdir(tmp_path / 'taken') == ['metrics.jsonl']


def test_runs_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(main.time, 'strftime', lambda fmt: '20240101-000000')
    args = options.parse_args('main', ['--output_dir', str(tmp_path)])
    folders = [main.run_folder(args, False) for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() and not any(f.iterdir()) for f in folders)
    assert folders[0].name == '20240101-000000_Synthetic_resnet18_light_hierarchy'
    assert folders[1].name == folders[0].name + '-1'


def test_atomic_write_temporary_names_are_unique(tmp_path):
    """A writer that starts while another writes the same file: both complete, neither tears the
    other (a fixed temporary name would be shared), no temporary file stays."""
    target = tmp_path / 'x.pth'

    def outer(f):
        f.write(b'outer-1 ')
        atomic_write(target, lambda g: g.write(b'inner'))
        f.write(b'outer-2')
    atomic_write(target, outer)
    assert target.read_bytes() == b'outer-1 outer-2' and os.listdir(tmp_path) == ['x.pth']


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / 'x.pth'
    target.write_bytes(b'old')

    def interrupted(f):
        f.write(b'half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b'old' and os.listdir(tmp_path) == ['x.pth']
    atomic_write(target, lambda f: f.write(b'new'))
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~files._umask())   # not mkstemp's 0600


def disk_full_after(n):
    """An atomic_write whose writer fills the disk after n bytes, as a full disk does."""
    real = files.atomic_write

    def atomic_write_(path, write):
        def partial(f):
            f.write(b'\0' * n)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, partial)
    return atomic_write_


def test_full_disk_checkpoint_write(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, 'atomic_write', disk_full_after(1000))
    (tmp_path / 'last.pth').write_bytes(b'good')
    with pytest.raises(checkpoint.CheckpointError, match='last.pth: the disk is full'):
        checkpoint.save_checkpoint(tmp_path / 'last.pth', args={}, model={})
    assert os.listdir(tmp_path) == ['last.pth'] and (tmp_path / 'last.pth').read_bytes() == b'good'


def test_full_disk_during_a_run(run, monkeypatch):
    monkeypatch.setattr(checkpoint, 'atomic_write', disk_full_after(1000))
    before = snapshot(run)
    fails(lambda: main.main(['--resume', str(run), '--max_steps', '4']), 'cannot write', '.pth', 'the disk is full')
    assert snapshot(run) == before and no_temp_files(run)


def test_full_disk_while_logging(run, monkeypatch):
    """A full disk outside the checkpoint writer (metrics.jsonl, figures) says so too."""
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(retrieval, 'retrieval_figure', lambda *a, **k: types.SimpleNamespace(save=full))
    fails(lambda: main.main(['--resume', str(run), '--max_steps', '4']), 'the disk is full')


def test_run_folder_read_only_during_a_run(run, monkeypatch):
    """Simulated (tests may run as root, where chmod does not stop writes): no permission to
    create the checkpoint's temporary file."""
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(files, 'tempfile', types.SimpleNamespace(mkstemp=denied))
    before = snapshot(run)
    fails(lambda: main.main(['--resume', str(run), '--max_steps', '4']), 'cannot write', 'permission denied')
    assert snapshot(run) == before


def can_write_into_read_only_folder(tmp_path):
    d = tmp_path / 'probe'
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / 'x').write_text('x')
        return True
    except PermissionError:
        return False
    finally:
        d.chmod(0o755)


def test_run_folder_read_only_for_real(run, tmp_path):
    if can_write_into_read_only_folder(tmp_path):
        pytest.skip('this user writes into read-only folders (root)')
    run.chmod(0o555)
    try:
        before = snapshot(run)
        fails(lambda: main.main(['--resume', str(run), '--max_steps', '4']), 'permission denied')
        assert snapshot(run) == before
    finally:
        run.chmod(0o755)


def test_unwritable_output_dir(data_root, tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if 'locked' in self.parts:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, 'mkdir', mkdir)
    fails(lambda: main.main(['--data_root', str(data_root), *TINY, '--output_dir', str(tmp_path / 'locked')]),
          'cannot create a run folder', 'locked', 'no permission')


def test_output_dir_under_a_file_cli(data_root, tmp_path):
    (tmp_path / 'file').write_text('x')
    code, _, err = cli('main.py', '--data_root', data_root, *TINY, '--output_dir', tmp_path / 'file' / 'runs')
    assert code == 1
    one_error_line(err, 'cannot create a run folder', 'file')


def test_data_root_where_the_embedded_dataset_cannot_be_written(tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    assert prepare.main(['dataset', '--data_root', str(tmp_path / 'file' / 'data'), '--summary']) == 2
    one_error_line(capsys.readouterr().err, '--dataset Synthetic: cannot generate it in', 'file')


def test_os_error_before_the_run_folder_exists(monkeypatch):
    """main's OSError branch with no run folder yet (it used to raise NameError on run_dir)."""
    def setup(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(main, 'setup', setup)
    fails(lambda: main.main([]), 'the disk is full')


# ----------------------------------------------------------------------------- options
REJECTED = [
    ('main', '--max_steps', '0'), ('main', '--max_steps', '-1'), ('main', '--batch_size', '0'),
    ('main', '--lr', 'nan'), ('main', '--lr', 'inf'), ('main', '--lr', '0'), ('main', '--lr', '-0.001'),
    ('main', '--lr', 'fast'), ('main', '--dim', '0'), ('main', '--margin', 'nan'), ('main', '--margin', '-0.2'),
    ('main', '--flip_prob', '7'), ('main', '--flip_prob', 'nan'), ('main', '--pair_chunk', '0'),
    ('main', '--eval_batch_size', '0'), ('main', '--epochs', '0'), ('main', '--eval_every', '0'),
    ('main', '--num_regions', '0'), ('main', '--image_size', '0'), ('main', '--att_dim', '0'),
    ('main', '--roi_size', '0'), ('main', '--line_width', '0'), ('main', '--workers', '-1'),
    ('main', '--seed', '-1'), ('main', '--aux_weight', 'nan'), ('main', '--merge_gap', 'inf'),
    ('main', '--figure_queries', '-1'), ('main', '--rerank', '-1'), ('main', '--first_stage_dim', '-1'),
    ('main', '--max_sketch_nodes', '-1'), ('main', '--synthetic_seed', '-1'), ('main', '--batch_size', '2.5'),
    ('evaluate', '--topk', '0'), ('evaluate', '--pair_chunk', '0'), ('dataset', '--num_regions', '0'),
]


@pytest.mark.parametrize('program,option,value', REJECTED)
def test_numeric_option_rejected_when_parsed(program, option, value, capsys):
    argv = [option, value] + (['--checkpoint', 'x.pth'] if program == 'evaluate' else [])
    with pytest.raises(SystemExit) as e:
        options.parse_args(program, argv)
    assert e.value.code == 2
    one_error_line(capsys.readouterr().err, f'argument {option}', repr(value))


def test_synthetic_size_rejected(capsys):
    with pytest.raises(SystemExit):
        options.parse_args('main', ['--synthetic_size', 'train_photos=0'])
    one_error_line(capsys.readouterr().err, '--synthetic_size', 'train_photos=0')


def test_option_rejected_by_the_cli_without_traceback():
    code, out, err = cli('main.py', '--max_steps', '0')
    assert code == 2 and out == ''
    assert one_error_line(err, '--max_steps', "'0'") == err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- Folder layout
def append_rows(root, *rows, bom=False):
    csv = root / 'pairs.csv'
    csv.write_text(('\ufeff' if bom else '') + csv.read_text() + ''.join(r + '\n' for r in rows), encoding='utf-8')


def expect_error(config, *fragments):
    with pytest.raises(DatasetError) as e:
        dataset.build_datasets(config)
    for f in fragments:
        assert str(f) in str(e.value), str(e.value)


@pytest.mark.parametrize('row', ['sketches/../../outside.png,photos/p0.png,train', '../x.png,photos/p0.png,train',
                                 'sketches/dark.png,../photos/p0.png,train',
                                 '{root}/sketches/dark.png,photos/p0.png,train',
                                 'sketches/dark.png,/etc/hostname,train'])
def test_folder_paths_outside_the_folder(folder_root, row):
    append_rows(folder_root, row.format(root=folder_root))
    expect_error(make_config('Folder', folder_root), 'pairs.csv line 6', 'leaves the dataset folder')


@pytest.mark.parametrize('row,fragment', [('sketches/dark.png,photos/p0.png,train', 'a duplicate row'),
                                          ('./sketches//dark.png,photos/p0.png,train', 'a duplicate row'),
                                          ('sketches/dark.png,photos/p1.png,train', "with photo 'photos/p0.png'")])
def test_folder_sketch_listed_twice(folder_root, row, fragment):
    append_rows(folder_root, row)
    expect_error(make_config('Folder', folder_root), 'pairs.csv line 6', "sketch 'sketches/dark.png' is listed twice",
                 'first at line 2', fragment)


def test_folder_photo_in_both_splits(folder_root):
    shutil.copy(folder_root / 'sketches' / 'dark.png', folder_root / 'sketches' / 'dark2.png')
    append_rows(folder_root, 'sketches/dark2.png,photos/p0.png,test')
    expect_error(make_config('Folder', folder_root), 'pairs.csv line 6', "photo 'photos/p0.png' is in both splits",
                 'train at line 2')


def test_folder_csv_with_bom_and_spaced_header(folder_root):
    csv = folder_root / 'pairs.csv'
    lines = csv.read_text().splitlines()
    csv.write_text('\ufeff' + 'sketch, photo, split\n' + '\n'.join(lines[1:]) + '\n', encoding='utf-8')
    train, test = dataset.build_datasets(make_config('Folder', folder_root))
    assert len(train) == 3 and len(test.queries) == 1


# ----------------------------------------------------------------------------- QMUL layout
def edit_pickle(path, fn):
    data = pickle.loads(path.read_bytes())
    fn(data)
    path.write_bytes(pickle.dumps(data))


@pytest.mark.parametrize('key', ['/test/train/chair_a_1', 'x/train/chair_a_1', '/train/chair_a_1/', '/train/_1'])
def test_qmul_key_matched_whole(qmul_root, key):
    """'/test/train/x_1' used to be filed as train (substring match); a key must be the whole form."""
    edit_pickle(qmul_root / 'ChairV2' / 'ChairV2_Coordinate', lambda d: d.update({key: vector_sketch()}))
    expect_error(make_config('ChairV2', qmul_root), repr(key), 'is not of the form')


def test_qmul_photo_in_both_splits(qmul_root):
    edit_pickle(qmul_root / 'ChairV2' / 'ChairV2_Coordinate', lambda d: d.update({'/test/chair_a_3': vector_sketch()}))
    expect_error(make_config('ChairV2', qmul_root), "photo 'chair_a.png' is in both splits", '/test/chair_a_3')


def test_qmul_box_table_of_another_photo_size(qmul_root):
    """chair_b.png is 80x48; boxes made for a 64x64 photo are refused (box 0 is the whole photo)."""
    edit_pickle(qmul_root / layouts.BOX_PICKLE.format('ChairV2'),
                lambda d: d.update({'chair_b.png': photo_boxes((64, 64))}))
    expect_error(make_config('ChairV2', qmul_root), "'chair_b.png'", 'box 0 is [0.0, 0.0, 64.0, 64.0]', 'is 80x48')


def test_qmul_replaced_photo_of_another_size(qmul_root):
    photo_image((100, 100), (1, 2, 3)).save(qmul_root / 'ChairV2' / 'photo' / 'c3.png')
    expect_error(make_config('ChairV2', qmul_root), "'c3.png'", 'is 100x100')


# ----------------------------------------------------------------------------- corrupt, foreign checkpoints
@pytest.mark.parametrize('damage', ['zero-byte', 'truncated', 'text', 'list'])
def test_corrupt_checkpoint(run, data_root, damage):
    path = run / 'last.pth'
    good = path.read_bytes()
    if damage == 'list':
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes({'zero-byte': b'', 'truncated': good[:len(good) // 2], 'text': b'hello'}[damage])
    fragment = 'not a checkpoint of this codebase' if damage == 'list' else 'not a readable checkpoint'
    fails(lambda: main.main(['--resume', str(run)]), 'last.pth', fragment)
    fails(lambda: evaluate.main(['--checkpoint', str(path), '--data_root', str(data_root)]), 'last.pth', fragment)


def test_corrupt_checkpoint_cli_no_traceback(run):
    (run / 'last.pth').write_bytes(b'')
    code, _, err = cli('main.py', '--resume', run)
    assert code == 1
    one_error_line(err, 'last.pth', 'not a readable checkpoint')


@pytest.mark.parametrize('option,value', [('--backbone', 'vgg16'), ('--dim', '16'), ('--variant', 'released'),
                                          ('--method', 'localised_coattn')])
def test_resume_with_another_model_named(run, option, value):
    stored = torch.load(run / 'last.pth', weights_only=True)['args'][option[2:]]
    fails(lambda: main.main(['--resume', str(run), option, value]),
          'last.pth', 'resnet18_light', f'{option} {value} (stored: {stored})')


def test_checkpoint_whose_weights_do_not_fit(run, data_root):
    """Stored options and model config say dim 16, the weights are dim 32: evaluate and resume name
    the model; options that disagree with the config are refused."""
    edit_checkpoint(run / 'last.pth', lambda s: s['args'].update(dim=16))
    fails(lambda: evaluate.main(['--checkpoint', str(run / 'last.pth'), '--data_root', str(data_root)]),
          'last.pth', 'stored options and model config disagree', 'dim 16 / 32')
    edit_checkpoint(run / 'last.pth', lambda s: s['model_config'].update(dim=16))
    fails(lambda: evaluate.main(['--checkpoint', str(run / 'last.pth'), '--data_root', str(data_root)]),
          'last.pth', 'weights do not fit', 'dim 16', 'size mismatch')
    fails(lambda: main.main(['--resume', str(run)]), 'weights do not fit', 'dim 16')


def test_checkpoint_of_another_version(run, data_root):
    edit_checkpoint(run / 'last.pth', lambda s: s['args'].update(backbone='resnet50_huge'))
    fails(lambda: evaluate.main(['--checkpoint', str(run / 'last.pth'), '--data_root', str(data_root)]),
          "--backbone 'resnet50_huge' is not valid")
    edit_checkpoint(run / 'best.pth', lambda s: s['args'].update(dim=0))
    fails(lambda: main.main(['--resume', str(run / 'best.pth')]), "--dim 0 is not valid")


def test_checkpoint_without_training_state(run):
    edit_checkpoint(run / 'last.pth', lambda s: s.pop('optimizer'))
    fails(lambda: main.main(['--resume', str(run)]), 'cannot resume from it', 'optimizer')


def test_missing_checkpoint(tmp_path, data_root):
    fails(lambda: main.main(['--resume', str(tmp_path)]), 'last.pth: no such checkpoint')
    fails(lambda: evaluate.main(['--checkpoint', str(tmp_path / 'x.pth'), '--data_root', str(data_root)]),
          'x.pth: no such checkpoint')


def test_write_error_names_the_file(tmp_path):
    with pytest.raises(WriteError, match=r'cannot write .*missing.*x\.pth'):
        atomic_write(tmp_path / 'missing' / 'x.pth', lambda f: f.write(b'x'))
