"""On-the-fly retrieval: the steps of vector and raster sketches, the metrics against a hand count,
the last step against the ordinary evaluation, batching across steps, and the command line."""
import json

import numpy as np
import pytest
import torch
from conftest import vector_sketch
from PIL import Image, ImageDraw
from test_train import TINY

import evaluate
import main
import onthefly
import experiment
import retrieval
from dataset import build_datasets


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    data, out = tmp_path_factory.mktemp('data'), tmp_path_factory.mktemp('runs')
    main.main(['--data_root', str(data), *TINY, '--output_dir', str(out), '--run_name', 'r', '--max_steps', '2',
               '--first_stage_dim', '8'])
    model, args, _, _ = experiment.load_model(out / 'r' / 'last.pth', {'data_root': str(data)}, 'cpu')
    _, test = build_datasets(experiment.data_config(args))
    return data, out / 'r', model, args, test


def test_vector_steps_are_the_stroke_prefixes():
    points = vector_sketch()        # 3 strokes: 5, 2 and 1 points
    steps = onthefly.vector_steps(points)
    assert [len(s) for s in steps] == [5, 7, 8]
    np.testing.assert_array_equal(steps[-1], points)
    unterminated = points.copy()
    unterminated[-1, 2] = 0         # a last stroke without pen-up still ends at the last point
    assert [len(s) for s in onthefly.vector_steps(unterminated)] == [5, 7, 8]


def test_raster_steps_add_ink_components_in_reading_order():
    img = Image.new('L', (160, 160), 255)
    d = ImageDraw.Draw(img)
    d.rectangle([100, 10, 120, 20], fill=0)     # first band, right: second
    d.rectangle([10, 12, 30, 22], fill=0)       # first band, left: first
    d.ellipse([60, 110, 90, 140], fill=0)       # lower band: third
    steps = onthefly.raster_steps(img)
    assert len(steps) == 3
    inks = [np.asarray(s.convert('L')) < 128 for s in steps]
    assert inks[0][15, 20] and not inks[0][15, 110] and not inks[0][125, 75]
    assert inks[1][15, 110] and not inks[1][125, 75]
    np.testing.assert_array_equal(inks[2], np.asarray(img) < 128)
    # Many specks: at most MAX_STEPS steps, the last one the whole sketch.
    many = Image.new('L', (200, 200), 255)
    for i in range(50):
        ImageDraw.Draw(many).rectangle([4 * (i % 10) * 4, 20 * (i // 10), 4 * (i % 10) * 4 + 3, 20 * (i // 10) + 3],
                                       fill=0)
    steps = onthefly.raster_steps(many, max_steps=8)
    assert len(steps) == 8
    np.testing.assert_array_equal(np.asarray(steps[-1].convert('L')) < 128, np.asarray(many) < 128)


def test_metrics_against_a_hand_count():
    # Sketch 0: 2 steps, ranks 4 then 1; sketch 1: 5 steps, ranks 10, 20, 2, 1, 1; gallery of 21.
    ranks = torch.tensor([4, 1, 10, 20, 2, 1, 1])
    owner = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    counts = torch.tensor([2, 5])
    m = onthefly.onthefly_metrics(ranks, owner, counts, 21)
    assert m['m@A'] == pytest.approx(((1 / 4 + 1) / 2 + (1 / 10 + 1 / 20 + 1 / 2 + 1 + 1) / 5) / 2)
    pct = lambda r: (21 - r) / 20   # noqa: E731
    assert m['m@B'] == pytest.approx(((pct(4) + pct(1)) / 2 + sum(map(pct, (10, 20, 2, 1, 1))) / 5) / 2)
    # 20 %: steps ceil(0.4) = 1 and ceil(1) = 1 -> ranks 4, 10; 40 %: steps 1, 2 -> 4, 20;
    # 60 %: steps 2, 3 -> 1, 2; 100 %: 1, 1.
    assert (m['acc@1@20'], m['acc@10@20']) == (0.0, 1.0)
    assert (m['acc@1@40'], m['acc@10@40']) == (0.0, 0.5)
    assert (m['acc@1@60'], m['acc@10@60']) == (0.5, 1.0)
    assert (m['acc@1@100'], m['acc@10@100']) == (1.0, 1.0)
    assert m['curve'][-1] == [1.0, 1.0, 1.0] and len(m['curve']) == len(onthefly.CURVE)


@pytest.mark.parametrize('rerank', [0, 2])
def test_the_last_step_is_the_ordinary_evaluation(trained, rerank):
    _, _, model, args, test = trained
    config = retrieval.EvalConfig(batch_size=5, rerank=rerank)
    m, steps, ranks = onthefly.evaluate_onthefly(model, test, 'cpu', args.image_size, config, progress=False)
    full, _, _, full_ranks = retrieval.evaluate(model, test, 'cpu', config, progress=False)
    last = torch.cumsum(steps.counts, 0) - 1
    assert torch.equal(ranks[last], full_ranks)
    assert m['acc@1@100'] == full['acc@1'] and m['acc@10@100'] == full['acc@10']
    assert steps.counts.tolist() == [len(onthefly.vector_steps(r.points)) for r in test.records]
    assert 'vector sketches' in m['kind']


def test_a_subset_of_sketches_ranks_their_steps_as_the_whole_split_does(trained):
    _, _, model, args, test = trained
    _, every, ranks = onthefly.evaluate_onthefly(model, test, 'cpu', args.image_size, progress=False)
    m, some, sub = onthefly.evaluate_onthefly(model, test, 'cpu', args.image_size, progress=False, sketches=2)
    first, last = 0, len(test.records) - 1          # figure_queries: evenly spread, both ends
    assert m['queries'] == 2 and some.counts.tolist() == every.counts[[first, last]].tolist()
    assert torch.equal(sub, torch.cat([ranks[every.owner == first], ranks[every.owner == last]]))


def test_batching_across_steps_does_not_change_the_scores(trained):
    """Steps of different sketches (different node counts) padded into one batch score as when
    each is encoded alone."""
    _, _, model, args, test = trained
    steps = onthefly.StepSet(test, args.image_size)
    gallery, _ = retrieval.encode_set(model, test.gallery, 'photo', 8, 'cpu', progress=False)
    batched, _ = retrieval.encode_set(model, steps, 'sketch', 16, 'cpu', progress=False)
    alone, _ = retrieval.encode_set(model, steps, 'sketch', 1, 'cpu', progress=False)
    torch.testing.assert_close(model.distance_matrix(batched, gallery), model.distance_matrix(alone, gallery),
                               rtol=1e-4, atol=1e-5)


def test_command_line_writes_json_and_figure(trained, tmp_path, capsys):
    data, run, *_ = trained
    m = evaluate.main(['--checkpoint', str(run / 'last.pth'), '--data_root', str(data), '--onthefly',
                       '--out', str(tmp_path)])
    out = capsys.readouterr().out
    assert 'on-the-fly' in out and 'prefixes of the strokes in drawing order' in out and 'm@A' in out
    saved = json.loads((tmp_path / 'onthefly_last.json').read_text())
    assert saved['m@A'] == pytest.approx(m['m@A']) and 0 < saved['m@B'] <= 1
    assert Image.open(tmp_path / 'onthefly_last.png').size[0] > 400


def test_tables_onthefly_puts_several_methods_on_one_figure_and_reuses_evaluations(tmp_path, monkeypatch):
    import tables
    out = tmp_path / 'out'
    argv = ['onthefly', '--data_root', str(tmp_path / 'data'), *TINY, '--max_steps', '1', '--out', str(out),
            '--methods', 'siamese', 'hierarchy_plus']
    tables.main(argv)
    table = json.loads((out / 'onthefly.json').read_text())
    assert list(table) == ['B-Siamese', 'Proposed+ (ours)']
    for row in table.values():
        assert 0 < row['m@A'] <= 1 and 0 < row['m@B'] <= 1 and row['queries'] == 6
    md = (out / 'onthefly.md').read_text()
    assert '| B-Siamese |' in md and 'm@A' in md and 'drawing order' in md
    assert Image.open(out / 'onthefly.png').size[0] > 600
    # A second call reuses the runs and their evaluations: nothing is trained or evaluated again.
    monkeypatch.setattr(tables, 'train_run', lambda argv: pytest.fail('retrained'))
    monkeypatch.setattr(onthefly, 'evaluate_checkpoint', lambda *a, **k: pytest.fail('re-evaluated'))
    tables.main(argv + ['--name', 'again'])
    assert json.loads((out / 'again.json').read_text())['B-Siamese']['m@A'] == table['B-Siamese']['m@A']


def test_raster_sketches_end_to_end_on_gui_data(tmp_path):
    """SyntheticGUI's raster sketches: steps by ink components, the last one the ordinary evaluation."""
    tiny = [a for a in TINY if a not in ('--synthetic_size', 'train_photos=4', 'test_photos=3', 'sketches_per_photo=2')]
    data, out = tmp_path / 'data', tmp_path / 'runs'
    main.main(['--dataset', 'SyntheticGUI', '--synthetic_size', 'screens=8', 'sketches_per_screen=2',
               '--data_root', str(data), *tiny, '--method', 'localised_coattn', '--max_steps', '1',
               '--output_dir', str(out), '--run_name', 'gui'])
    model, args, _, _ = experiment.load_model(out / 'gui' / 'last.pth', {}, 'cpu')
    _, test = build_datasets(experiment.data_config(args))
    m, steps, ranks = onthefly.evaluate_onthefly(model, test, 'cpu', args.image_size, progress=False)
    _, _, _, full_ranks = retrieval.evaluate(model, test, 'cpu', progress=False)
    assert 'raster sketches: ink components added in reading order' == m['kind']
    assert (steps.counts > 1).any() and (steps.counts <= onthefly.MAX_STEPS).all()
    assert torch.equal(ranks[torch.cumsum(steps.counts, 0) - 1], full_ranks)
