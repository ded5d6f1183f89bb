"""A run stays one run on one set of data, and a run that fails leaves nothing half-made
(issue 15): --resume refuses another --dataset, --data_root, split or data option (naming it);
--init_from CKPT is the way to start a new run from a checkpoint's weights; a fresh run that fails
before its first evaluation leaves no empty folder; impossible set-ups (a batch of one with batch
negatives, a malformed torchrun environment) are one line before any work."""
import json

import pytest
import torch
import test_trust
from test_trust import TINY, cli, fails, one_error_line, snapshot

import main
import runtime

# test_trust's fixtures: a healthy 2-step run (module scope) and a private copy of it per test.
data_root, healthy, run = test_trust.data_root, test_trust.healthy, test_trust.run


@pytest.mark.parametrize('option, value, shown', [
    ('--dataset', 'SyntheticGUI', '--dataset SyntheticGUI (stored: Synthetic)'),
    ('--data_root', 'elsewhere', '--data_root elsewhere (stored: '),
    ('--validation', '0.3', '--validation 0.3 (stored: 0.0)'),
    ('--synthetic_seed', '5', '--synthetic_seed 5 (stored: 0)'),
    ('--sketch_detail', 'coarse', '--sketch_detail coarse (stored: full)'),
    ('--image_size', '96', '--image_size 96 (stored: 64)'),
])
def test_resume_refuses_other_data(run, option, value, shown):
    before, args_json, metrics = snapshot(run), (run / 'args.json').read_text(), (run / 'metrics.jsonl').read_text()
    fails(lambda: main.main(['--resume', str(run), option, value, '--max_steps', '4']),
          'continues the run on its own data', shown, '--init_from')
    assert snapshot(run) == before and (run / 'args.json').read_text() == args_json
    assert (run / 'metrics.jsonl').read_text() == metrics


def test_resume_accepts_the_stored_data_typed_again(run, data_root):
    m = main.main(['--resume', str(run), '--data_root', str(data_root) + '/', '--dataset', 'Synthetic',
                   '--max_steps', '3'])
    assert m['step'] == 3


def test_init_from_starts_a_new_run_from_the_weights_on_other_data(run, tmp_path):
    other, out = tmp_path / 'other_data', tmp_path / 'runs'
    # no --dim / --att_dim typed: the model options are the checkpoint's (32 / 8), not the defaults
    argv = ['--data_root', str(other), '--synthetic_seed', '3', '--synthetic_size', 'train_photos=4', 'test_photos=3',
            'sketches_per_photo=2', '--image_size', '64', '--batch_size', '4', '--lr', '1e-12', '--workers', '0',
            '--device', 'cpu', '--output_dir', str(out), '--run_name', 'new', '--max_steps', '1',
            '--init_from', str(run / 'last.pth')]
    main.main(argv)
    new = torch.load(out / 'new' / 'last.pth', weights_only=True)
    old = torch.load(run / 'last.pth', weights_only=True)
    assert new['step'] == 1 and new['args']['dim'] == 32 and new['args']['synthetic_seed'] == 3
    assert new['model'].keys() == old['model'].keys()
    for k, v in old['model'].items():      # one step at lr 1e-12 from the checkpoint's weights
        if 'running_' in k or 'num_batches' in k:
            continue                       # batch-norm statistics follow the new data
        torch.testing.assert_close(new['model'][k].float(), v.float(), atol=1e-6, rtol=0)
    assert json.loads((out / 'new' / 'args.json').read_text())['init_from'] == str(run / 'last.pth')
    fails(lambda: main.main([*argv[:-2], '--resume', str(run), '--init_from', str(run / 'last.pth')]),
          'give one of them')


def test_a_fresh_run_that_fails_leaves_no_empty_folder(tmp_path):
    out = tmp_path / 'runs'
    fails(lambda: main.main(['--dataset', 'Folder', '--data_root', str(tmp_path / 'nothing'), '--output_dir', str(out),
                             '--run_name', 'r', '--device', 'cpu']), 'does not exist')
    assert not (out / 'r').exists()


def test_a_fresh_run_diverging_before_its_first_evaluation_says_its_folder_is_gone(data_root, tmp_path):
    """Its error names the checkpoints of the last good evaluation; there are none, and the
    empty folder is removed: the line says so."""
    msg = fails(lambda: main.main(['--data_root', str(data_root), *TINY, '--lr', '1e10', '--max_steps', '4',
                                   '--eval_every', '4', '--output_dir', str(tmp_path), '--run_name', 'r']),
                'non-finite', 'was removed')
    assert not (tmp_path / 'r').exists(), msg


def test_batch_negatives_need_a_batch_of_two(data_root, tmp_path):
    fails(lambda: main.main(['--data_root', str(data_root), *TINY, '--batch_size', '1', '--negatives', 'batch_hard',
                             '--output_dir', str(tmp_path)]), 'a batch of 1 per process has none')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('env, fragment', [
    ({'WORLD_SIZE': 'abc'}, "WORLD_SIZE='abc' in the environment"),
    ({'WORLD_SIZE': '2'}, 'WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set'),
    ({'LOCAL_RANK': '-1'}, "LOCAL_RANK='-1'"),
])
def test_malformed_torchrun_environment(monkeypatch, env, fragment):
    for k in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fails(lambda: runtime.init_distributed('cpu'), fragment)


def test_malformed_world_size_cli(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', 'abc')
    code, _, err = cli('main.py', '--data_root', data_root, *TINY, '--output_dir', tmp_path)
    assert code == 1
    one_error_line(err, 'WORLD_SIZE')
