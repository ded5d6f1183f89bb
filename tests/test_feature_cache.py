"""The frozen trunk and its feature cache (--freeze_backbone, --feature_cache): the same training
step as without the cache, batch norm of frozen stages untouched, stale files refused."""
import copy

import pytest
import torch
from test_train import TINY

import experiment
import feature_cache
import main
import options
import train
from dataset import build_datasets, collate
from losses import TripletLoss
from methods import ModelConfig, build_model


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def setup(data_root, *extra):
    args = options.parse_args('main', ['--data_root', str(data_root), *TINY, *extra])
    torch.manual_seed(0)
    train_set, test = build_datasets(experiment.data_config(args))
    return args, train_set, test, build_model(ModelConfig.from_options(args), args.pretrained, args.freeze_backbone)


def step(model, args, batch):
    optimizer = train.make_optimizer(model, args)
    torch.manual_seed(1)        # the same Gumbel noise for both paths
    return train.train_step(model, TripletLoss(args.margin), batch, optimizer, torch.device('cpu'))


@pytest.mark.parametrize('method', ['hierarchy', 'siamese'])
@pytest.mark.parametrize('freeze', ['all', '3'])
def test_cached_step_equals_uncached_step(data_root, method, freeze):
    """One step with the cache (filled on an earlier pass) gives the loss and the weights of the
    same step without it, for a fully frozen backbone (cached regions) and a partly frozen one
    (cached maps)."""
    args, train_set, _, model = setup(data_root, '--method', method, '--freeze_backbone', freeze)
    batch = collate([train_set[(i, 7 + i)] for i in range(4)])
    plain = copy.deepcopy(model)
    caches = feature_cache.attach(model)
    assert len(caches) == 1
    with torch.no_grad():                        # fill the cache (as a first epoch would)
        model.eval().encode([('sketch', {'image': batch['sketch'], 'boxes': batch['sketch_boxes'],
                                  'mask': batch['sketch_mask'], 'keys': batch['sketch_key']})])
    model.train()
    filled = len(caches[0])
    assert filled == 4
    loss_cached = step(model, args, batch)
    loss_plain = step(plain, args, batch)
    assert caches[0].hits >= 4 and len(caches[0]) > filled     # sketches hit, photos were added
    assert loss_cached == pytest.approx(loss_plain, rel=1e-5, abs=1e-7)
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_frozen_stages_do_not_train(data_root):
    args, train_set, _, model = setup(data_root, '--freeze_backbone', '4')
    backbone = model.sketch_encoder.backbone
    trunk, rest = backbone.trunk(), backbone[5:]
    before = copy.deepcopy(backbone.state_dict())
    model.train()
    assert not any(m.training for stage in trunk for m in stage.modules())
    assert all(m.training for stage in rest for m in stage.modules())
    optimizer = train.make_optimizer(model, args)
    trained = {id(p) for g in optimizer.param_groups for p in g['params']}
    assert not any(id(p) in trained for p in trunk.parameters())
    assert all(id(p) in trained for p in rest.parameters())
    for i in range(3):
        batch = collate([train_set[(k, i * 10 + k)] for k in range(4)])
        train.train_step(model, TripletLoss(args.margin), batch, optimizer, torch.device('cpu'))
    after = backbone.state_dict()
    frozen = [k for k in before if int(k.split('.')[0]) <= 4]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)        # BN statistics too
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen)


def test_cache_file_is_reused_and_a_stale_one_refused(data_root, tmp_path, capsys):
    path = tmp_path / 'features.pt'
    run = ['--data_root', str(data_root), *TINY, '--output_dir', str(tmp_path / 'runs'), '--max_steps', '2',
           '--freeze_backbone', 'all', '--feature_cache', str(path)]
    main.main(run)
    saved = torch.load(path, weights_only=True)
    assert saved['keys'] and len(saved['keys']) == len(saved['values'])
    # The same trunk reads it back: its entries are used, none computed again.
    args, train_set, _, model = setup(data_root, '--freeze_backbone', 'all')
    cache, = feature_cache.attach(model, path)
    assert len(cache) == len(saved['keys'])
    # Other weights (another seed of a from-scratch backbone), another N: refused.
    for extra in (['--seed', '1'], ['--freeze_backbone', '3']):
        with pytest.raises(SystemExit, match='stale feature cache'):
            main.main([*run, *extra])
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit, match='not a readable feature cache'):
        main.main(run)


def test_feature_cache_needs_a_frozen_backbone(data_root):
    with pytest.raises(SystemExit, match='needs --freeze_backbone'):
        options.parse_args('main', ['--data_root', str(data_root), *TINY, '--feature_cache', 'x.pt'])
    with pytest.raises(SystemExit, match='has 7 stages'):
        options.parse_args('main', ['--data_root', str(data_root), *TINY, '--freeze_backbone', '8'])
    assert options.parse_args('main', [*TINY, '--freeze_backbone', 'all']).freeze_backbone == 7
