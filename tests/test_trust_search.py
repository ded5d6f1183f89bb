"""Searching a photo folder (evaluate.py --query ... --gallery DIR) trusts nothing it finds there
(issue 15): the gallery's box cache passes the datasets' box check (bad entries recomputed and
counted), the index must hold the gallery's own photos row by row, a read-only gallery is searched
without storing anything, and what is printed and drawn is what was ranked."""
import errno
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trust import TINY

import evaluate
import files
import main
import search

REPO = Path(__file__).resolve().parents[1]
BOX_FILE = '.fgsbir_boxes.json'     # the gallery's box cache (search.BOX_FILE)
QUERY = np.array([[40, 40, 0], [200, 40, 0], [200, 200, 1], [60, 60, 0], [180, 180, 1]], float)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Two tiny trained runs on one generated dataset: 'fs' with a first stage, 'plain' without."""
    data, out = tmp_path_factory.mktemp('data'), tmp_path_factory.mktemp('runs')
    for name, extra in (('fs', ['--first_stage_dim', '8']), ('plain', [])):
        main.main(['--data_root', str(data), *TINY, '--output_dir', str(out), '--run_name', name, '--max_steps', '1',
                   *extra])
    return data, out


@pytest.fixture(scope='module')
def built(runs, tmp_path_factory):
    """A small gallery (six photos) with its box cache and the 'fs' model's index, built once."""
    data, out = runs
    g = tmp_path_factory.mktemp('built') / 'gallery'
    g.mkdir()
    for p in sorted((data / 'Synthetic' / 'photo').glob('*.png'))[:6]:
        shutil.copy2(p, g / p.name)
    np.save(g.parent / 'q.npy', QUERY)
    evaluate.main(search_argv(out, 'fs', g))
    return g


@pytest.fixture
def gallery(built, tmp_path):
    """A private copy of the built gallery (photos, box cache, index) and the query beside it."""
    g = Path(shutil.copytree(built, tmp_path / 'gallery', copy_function=shutil.copy2))
    shutil.copy2(built.parent / 'q.npy', tmp_path / 'q.npy')
    return g


def search_argv(out, run, gallery, *extra):
    return ['--checkpoint', str(out / run / 'last.pth'), '--query', str(gallery.parent / 'q.npy'),
            '--gallery', str(gallery), '--topk', '6', *extra]


def test_bad_gallery_box_cache_entries_are_recomputed_and_counted(runs, gallery):
    """NaN boxes segfaulted the process (run in a subprocess), 1e30 boxes ranked their photo first,
    a string or an empty list was a traceback."""
    data, out = runs
    argv = search_argv(out, 'fs', gallery)
    clean = evaluate.main(argv)
    cache = gallery / BOX_FILE
    table = json.loads(cache.read_text())
    names = sorted(table['photos'])
    for name, bad in zip(names, ['NaN', [[-1e30, -1e30, 1e30, 1e30]] * 3, 'boxes', []]):
        table['photos'][name]['boxes'] = bad
    cache.write_text(json.dumps(table).replace('"NaN"', 'NaN'))
    (gallery / search.INDEX_FILE).unlink()
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    p = subprocess.run([sys.executable, 'evaluate.py', *argv], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'gallery boxes: 4 bad entries of' in p.stdout
    ranked = [line.split()[-1] for line in p.stdout.splitlines() if line[:4].strip().isdigit()]
    assert ranked == [name for name, _ in clean]
    assert all(np.isfinite(e['boxes']).all() and e['boxes'][0][:2] == [0, 0]
               for e in json.loads(cache.read_text())['photos'].values())


def test_forged_index_with_permuted_names_is_rebuilt(runs, gallery, capsys):
    data, out = runs
    argv = search_argv(out, 'fs', gallery)
    clean = evaluate.main(argv)
    path = gallery / search.INDEX_FILE
    state = torch.load(path, weights_only=True)
    state['names'] = state['names'][::-1]           # the right identity hash, rows under other names
    torch.save(state, path)
    capsys.readouterr()
    assert [n for n, _ in evaluate.main(argv)] == [n for n, _ in clean]
    assert 'does not hold one feature row per photo of the gallery, in order; rebuilding' in capsys.readouterr().out


def test_read_only_gallery_is_searched_without_storing_anything(runs, gallery, capsys, monkeypatch):
    """Simulated (tests may run as root): no file can be created in the gallery. The note names
    the file and does not send the user to proposals.py, which a gallery does not read."""
    data, out = runs
    (gallery / search.INDEX_FILE).unlink()
    (gallery / BOX_FILE).unlink()
    before = sorted(os.listdir(gallery))
    real = files.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if Path(dir) == gallery:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(files, 'tempfile', types.SimpleNamespace(mkstemp=mkstemp))
    ranked = evaluate.main(search_argv(out, 'fs', gallery))
    assert len(ranked) == 6
    printed = capsys.readouterr().out
    assert f'cannot write {gallery / BOX_FILE}: permission denied' in printed
    assert f'cannot write {gallery / search.INDEX_FILE}: permission denied' in printed
    assert 'proposals.py' not in printed
    assert sorted(os.listdir(gallery)) == before


def test_two_queries_with_one_stem_get_two_figures(runs, gallery, tmp_path):
    data, out = runs
    before = set((out / 'fs').glob('search_q_*.png'))      # other tests' queries are drawn there too
    (tmp_path / 'other').mkdir()
    np.save(tmp_path / 'other' / 'q.npy', QUERY[::-1].copy() * [1, 1, 0] + [0, 0, 1] * (np.arange(5) % 2)[:, None])
    for q in (tmp_path / 'q.npy', tmp_path / 'other' / 'q.npy'):
        evaluate.main(['--checkpoint', str(out / 'fs' / 'last.pth'), '--query', str(q), '--gallery', str(gallery)])
    assert len(set((out / 'fs').glob('search_q_*.png')) - before) == 2


def test_rerank_without_a_first_stage_says_so_and_ranks_by_the_head(runs, gallery, capsys):
    data, out = runs
    plain = evaluate.main(search_argv(out, 'plain', gallery))
    capsys.readouterr()
    again = evaluate.main(search_argv(out, 'plain', gallery, '--rerank', '3'))
    printed = capsys.readouterr().out
    assert '--rerank 3 does not apply' in printed and '(rerank 3)' not in printed
    assert [n for n, _ in again] == [n for n, _ in plain]          # (the float16 index: distances alike)
    assert [d for _, d in again] == pytest.approx([d for _, d in plain], rel=1e-2)


def test_rerank_1_prints_a_distance_only_for_the_photo_the_head_scored(runs, gallery, capsys):
    data, out = runs
    evaluate.main(search_argv(out, 'fs', gallery, '--rerank', '1'))
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 6
    float(rows[0][1])                                   # the head's distance
    assert all(r[1:3] == ['1st', 'stage'] for r in rows[1:])   # first-stage order, no number posing as a distance
