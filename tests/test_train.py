"""End to end on a tiny generated dataset: the loss falls, runs resume exactly, checkpoints evaluate."""
import json

import pytest
import torch

import evaluate
import experiment
import main
import options
import train
from dataset import build_datasets, collate
from losses import TripletLoss
from methods import ModelConfig, build_model

TINY = ['--synthetic_size', 'train_photos=4', 'test_photos=3', 'sketches_per_photo=2',
        '--image_size', '64', '--dim', '32', '--att_dim', '8', '--batch_size', '4', '--lr', '1e-3',
        '--workers', '0', '--device', 'cpu']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def test_training_steps_reduce_the_loss(data_root):
    args = options.parse_args('main', ['--data_root', str(data_root), *TINY])
    torch.manual_seed(0)
    train_set, _ = build_datasets(experiment.data_config(args))
    batch = collate([train_set[i] for i in range(8)])
    model = build_model(ModelConfig.from_options(args), args.pretrained, args.freeze_backbone)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = TripletLoss(args.margin)
    losses = [train.train_step(model, loss_fn, batch, opt, torch.device('cpu')) for _ in range(30)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses


def run_main(data_root, out, *extra):
    # A cosine schedule, so that the resumed run must also get the learning rate right.
    return main.main(['--data_root', str(data_root), *TINY, '--output_dir', str(out),
                      '--lr_schedule', 'cosine', *extra])


def test_run_resume_and_evaluate(data_root, tmp_path, monkeypatch):
    # 4 steps in one go ...
    run_main(data_root, tmp_path, '--run_name', 'straight', '--max_steps', '4', '--eval_every', '2')
    # ... and the same run killed during its third step, then --resume: the same batches, the
    # same learning rates, the same weights.
    real_step, calls = train.train_step, []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*a, **k)
    monkeypatch.setattr(train, 'train_step', crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_main(data_root, tmp_path, '--run_name', 'split', '--max_steps', '4', '--eval_every', '2')
    monkeypatch.setattr(train, 'train_step', real_step)
    run_main(data_root, tmp_path, '--resume', str(tmp_path / 'split'))
    straight = torch.load(tmp_path / 'straight' / 'last.pth', weights_only=True)
    split = torch.load(tmp_path / 'split' / 'last.pth', weights_only=True)
    assert straight['step'] == split['step'] == 4
    for k, v in straight['model'].items():
        torch.testing.assert_close(split['model'][k], v, atol=1e-6, rtol=1e-5, msg=k)

    run = tmp_path / 'straight'
    for f in ('args.json', 'best.pth', 'last.pth', 'retrieval_last.png'):
        assert (run / f).is_file(), f
    assert any((run / 'tb').iterdir())
    lines = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [m['step'] for m in lines] == [2, 4]
    best = torch.load(run / 'best.pth', weights_only=True)
    stored = next(m for m in lines if m['step'] == best['step'])

    # evaluate.py rebuilds the model from the checkpoint alone and reproduces the numbers.
    metrics = evaluate.main(['--checkpoint', str(run / 'best.pth'), '--data_root', str(data_root)])
    for k in ('acc@1', 'acc@10', 'mean_rank'):
        assert metrics[k] == pytest.approx(stored[k]), k
    assert (run / 'retrieval_best.png').is_file()
    coarse = evaluate.main(['--checkpoint', str(run / 'best.pth'), '--data_root', str(data_root),
                            '--sketch_detail', 'coarse++'])
    assert coarse['sketch_detail'] == 'coarse++' and (run / 'retrieval_best_coarse++.png').is_file()


def test_learning_rate_schedules():
    cosine = options.parse_args('main', ['--lr', '1e-3', '--lr_schedule', 'cosine'])
    assert [train.learning_rate(cosine, s, 100) for s in (0, 50, 100)] == pytest.approx([1e-3, 5e-4, 0])
    paper = options.parse_args('main', ['--backbone', 'vgg16'])
    assert paper.lr_schedule == 'constant' and train.learning_rate(paper, 77, 100) == paper.lr == 1e-4


@pytest.mark.parametrize('negatives', ['sampled', 'batch', 'batch_hard'])
@pytest.mark.parametrize('shared', [True, False])
def test_train_step_loss_matches_explicit_triplets(data_root, negatives, shared):
    """The batched step against triplets written out one by one (eval mode: greedy, no noise)."""
    flag = '--no-separate_backbones' if shared else '--separate_backbones'
    args = options.parse_args('main', ['--data_root', str(data_root), *TINY, flag])
    torch.manual_seed(0)
    train_set, _ = build_datasets(experiment.data_config(args))
    items = [train_set[i] for i in range(4)]
    batch = collate(items)
    model = build_model(ModelConfig.from_options(args), args.pretrained, args.freeze_backbone).eval()
    assert (model.sketch_encoder is model.photo_encoder) == shared
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train.train_step(model, TripletLoss(args.margin, negatives), batch, opt, torch.device('cpu'))

    def dist(a, ka, b, kb):
        def ones(n):
            return torch.ones(1, n, dtype=torch.bool)
        with torch.no_grad():
            s = model.sketch_encoder(a[ka][None], a[f'{ka}_boxes'][None], ones(len(a[f'{ka}_boxes'])))
            p = model.photo_encoder(b[kb][None], b[f'{kb}_boxes'][None], ones(len(b[f'{kb}_boxes'])))
            se, pe = model.head(s, ones(s.shape[1]), p, ones(p.shape[1]))
        return (se - pe).pow(2).sum().item()
    terms = []
    for i, a in enumerate(items):
        d_pos = dist(a, 'sketch', a, 'positive')
        if negatives == 'sampled':
            negs = [dist(a, 'sketch', a, 'negative')]
        else:
            negs = [dist(a, 'sketch', b, 'positive') for b in items if b['photo_name'] != a['photo_name']]
            if negatives == 'batch_hard':
                negs = [min(negs)] if negs else []
        terms += [max(0.0, args.margin + d_pos - d) for d in negs]
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-4, abs=1e-5)
