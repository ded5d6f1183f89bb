"""Each table command of tables.py end to end on a tiny generated dataset: its Markdown and JSON,
the paper's column beside ours, finished runs reused instead of retrained, an interrupted run resumed."""
import json
import shutil

import pytest
from test_train import TINY

import tables

BUDGET = ['--max_steps', '2']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def run_table(name, data_root, out, *extra):
    tables.main([name, '--data_root', str(data_root), *TINY, *BUDGET, '--out', str(out), *extra])


def rows(md):
    return [line for line in md.read_text().splitlines() if line.startswith('| ') and '---' not in line][1:]


def test_table1_table2_kregions_and_the_coarse_figure(data_root, tmp_path):
    out = tmp_path / 'tables'
    run_table('table1', data_root, out, '--methods', 'siamese', 'localised_coattn', 'hierarchy')
    t1 = json.loads((out / 'table1.json').read_text())
    assert list(t1) == ['B-Siamese', 'B-Localised-Coattn', 'Proposed']
    assert all(0 <= t1[k]['acc@1'] <= t1[k]['acc@10'] <= 1 for k in t1)
    assert [r.split(' | ')[0] for r in rows(out / 'table1.md')] == ['| B-Siamese', '| B-Localised-Coattn', '| Proposed']
    runs = sorted(p.name for p in (out / 'runs').iterdir())
    assert len(runs) == 3 and all((out / 'runs' / r / 'done.json').is_file() for r in runs)

    # table2 reuses the siamese, localised_coattn and hierarchy runs: one new run (no_coattn).
    stamps = {r: (out / 'runs' / r / 'last.pth').stat().st_mtime_ns for r in runs}
    run_table('table2', data_root, out)
    assert {r: (out / 'runs' / r / 'last.pth').stat().st_mtime_ns for r in runs} == stamps
    assert len(list((out / 'runs').iterdir())) == 4
    t2 = json.loads((out / 'table2.json').read_text())
    assert list(t2) == ['w/o Localised-Coattn', 'w/o Hierarchy', 'Sketch-coarse', 'Sketch-coarse++', 'Proposed']
    assert t2['Proposed']['acc@1'] == t1['Proposed']['acc@1']
    assert t2['w/o Hierarchy']['acc@10'] == t1['B-Localised-Coattn']['acc@10']
    t3 = json.loads((out / 'table3.json').read_text())
    assert list(t3) == ['full', 'coarse', 'coarse++'] and t3['full']['proposed']['acc@1'] == t1['Proposed']['acc@1']

    run_table('kregions', data_root, out, '--kregions_eval_only')
    k = json.loads((out / 'kregions.json').read_text())
    assert list(k) == ['8', '12', '16', '20'] and all(v['seconds_per_query'] > 0 for v in k.values())
    assert (out / 'kregions.png').stat().st_size > 0 and len(rows(out / 'kregions.md')) == 4

    figure = tmp_path / 'coarse.png'
    run_table('coarse_figure', data_root, out, '--figure', str(figure), '--figure_sketches', '2')
    assert figure.stat().st_size > 0
    assert len(list((out / 'runs').iterdir())) == 4          # every study reused the trained runs


def test_an_interrupted_row_is_resumed_not_restarted(data_root, tmp_path):
    out = tmp_path / 'tables'
    run_table('table1', data_root, out, '--methods', 'siamese')
    run = next((out / 'runs').iterdir())
    first = json.loads((run / 'done.json').read_text())
    (run / 'done.json').unlink()                      # as if killed after its last checkpoint
    shutil.rmtree(run / 'tb')
    run_table('table1', data_root, out, '--methods', 'siamese')
    assert len(list((out / 'runs').iterdir())) == 1
    assert json.loads((run / 'done.json').read_text())['acc@1'] == first['acc@1']


def test_explicit_hierarchy_row_on_gui_data(data_root, tmp_path):
    tiny = [a for a in TINY if a not in ('--synthetic_size', 'train_photos=4', 'test_photos=3', 'sketches_per_photo=2')]
    out = tmp_path / 'gui'
    tables.main(['table2', '--dataset', 'SyntheticGUI', '--synthetic_size', 'screens=8', 'sketches_per_screen=2',
                 '--data_root', str(data_root), *tiny, *BUDGET, '--out', str(out)])
    t2 = json.loads((out / 'table2.json').read_text())
    assert list(t2)[0] == 'Explicit Hierarchy' and 0 <= t2['Explicit Hierarchy']['acc@1'] <= 1
