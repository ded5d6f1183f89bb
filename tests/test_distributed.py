"""Training under torchrun: the sampler's shares make the global batch, two CPU processes (gloo)
end with identical weights, evaluation counts every query once, and a killed 2-process run
resumes to the same weights as an uninterrupted one.

How the two ranks are compared: a DDP run cannot be compared with a single-process run of the
same options, because batch norm (the light backbone has it) normalises each process's share with
its own statistics, so the two trainings differ by design. Instead the processes run main.py
through a small launcher (WORKER below, written to a temporary file, nothing added to the code
under test) that wraps train.Trainer.run and train.train_step: after training, each rank saves
its own model state_dict and the (targets) rows its evaluation ranked; on request, every rank
raises KeyboardInterrupt in its Nth training step, as a killed job would. Each torchrun launch
has a time limit (300 s) after which it is ended with its workers and the test fails.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import dataset
import evaluate
import experiment
import main
import options
import train
from train import EpochSampler

REPO = Path(__file__).resolve().parents[1]
# 12 training sketches, batch 4: 3 steps an epoch, so step 2 (an evaluation, the checkpoint the
# resumed run starts from) is in the middle of an epoch. 5 gallery photos, 10 queries: odd shares.
SMALL = ['--synthetic_size', 'train_photos=6', 'test_photos=5', 'sketches_per_photo=2',
         '--image_size', '64', '--dim', '32', '--att_dim', '8', '--batch_size', '4', '--lr', '1e-3',
         '--workers', '0', '--device', 'cpu']

WORKER = '''
import os, sys
sys.path.insert(0, os.environ['FGSBIR_REPO'])
import torch
import main, retrieval, train

dump, crash = os.environ['FGSBIR_TEST_DUMP'], int(os.environ.get('FGSBIR_TEST_CRASH_AT', 0))
real_step, real_run, real_metrics = train.train_step, train.Trainer.run, retrieval.retrieval_metrics
calls, evaluated = [], []

def train_step(*a, **k):
    calls.append(1)
    if len(calls) == crash:
        raise KeyboardInterrupt
    return real_step(*a, **k)

def retrieval_metrics(dist, targets):
    evaluated.append(targets.tolist())
    return real_metrics(dist, targets)

def run(self):
    m = real_run(self)
    torch.save({'model': self.model.state_dict(), 'metrics': m, 'evaluated': evaluated},
               os.path.join(dump, f'rank{self.rank}.pt'))
    return m

train.train_step, train.Trainer.run, retrieval.retrieval_metrics = train_step, run, retrieval_metrics
main.main(sys.argv[1:])
'''

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason='torch.distributed with gloo is not available')


def torchrun(worker, dump, *args, crash=0, timeout=300):
    """Two CPU processes under torchrun (--standalone: a free port of its own) -> (code, output)."""
    dump.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO), 'FGSBIR_REPO': str(REPO),
           'FGSBIR_TEST_DUMP': str(dump), 'FGSBIR_TEST_CRASH_AT': str(crash)}
    # A session of its own, so that a run past the timeout is ended with its worker processes.
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          str(worker), *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f'torchrun ran past {timeout} s:\n{out[-3000:]}')
    return p.returncode, out


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


# ----------------------------------------------------------------------------- no processes
@pytest.mark.parametrize('world', [2, 4])
def test_shares_make_the_global_batch(world):
    """Rank r's share of each step, concatenated in rank order, is the single process's batch."""
    n, batch = 23, 8
    alone = list(EpochSampler(n, batch, seed=3))
    for start in (0, 1):
        ranks = []
        for r in range(world):
            s = EpochSampler(n, batch, seed=3, rank=r, world=world)
            s.set_epoch(0, start)
            ranks.append(list(s))
            assert len(ranks[-1]) == len(s) == (n // batch - start) * batch // world
        share = batch // world
        glued = [k for step in range(n // batch - start) for r in range(world)
                 for k in ranks[r][step * share:(step + 1) * share]]
        assert glued == alone[start * batch:]
    with pytest.raises(ValueError, match='not divisible'):
        EpochSampler(n, 6, seed=0, rank=0, world=4)


def test_batch_size_not_divisible_by_the_processes(monkeypatch):
    monkeypatch.setattr(main.runtime, 'init_distributed', lambda device: (0, 3, torch.device('cpu')))
    with pytest.raises(SystemExit, match='--batch_size 16 is the global batch; it must be divisible by the 3'):
        main.setup(['--batch_size', '16'])


def test_resume_in_the_middle_of_an_epoch_is_exact(tmp_path, monkeypatch):
    """Killed in step 3 (the checkpoint is step 2, mid-epoch), resumed: the same weights as a run
    that was never interrupted (the loader's seed no longer comes from the global generator)."""
    data = tmp_path / 'data'

    def run_main(*extra):
        return main.main(['--data_root', str(data), *SMALL, '--output_dir', str(tmp_path), '--max_steps', '4',
                          '--eval_every', '2', *extra])
    run_main('--run_name', 'straight')
    real, calls = train.train_step, []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(train, 'train_step', crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_main('--run_name', 'split')
    monkeypatch.setattr(train, 'train_step', real)
    main.main(['--resume', str(tmp_path / 'split')])
    straight = torch.load(tmp_path / 'straight' / 'last.pth', weights_only=True)
    split = torch.load(tmp_path / 'split' / 'last.pth', weights_only=True)
    assert straight['step'] == split['step'] == 4
    assert_same_weights(straight['model'], split['model'])


# ----------------------------------------------------------------------------- two processes
@pytest.fixture(scope='module')
def ddp(tmp_path_factory):
    """The generated data, and a 2-process run of 4 steps (evaluations at steps 2 and 4)."""
    root = tmp_path_factory.mktemp('ddp')
    data = root / 'data'
    args = options.parse_args('main', ['--data_root', str(data), *SMALL])
    dataset.build_datasets(experiment.data_config(args))      # generate once, before the processes start
    worker = root / 'worker.py'
    worker.write_text(WORKER)
    code, out = torchrun(worker, root / 'straight_dump', '--data_root', data, *SMALL, '--max_steps', '4',
                         '--eval_every', '2', '--output_dir', root / 'runs', '--run_name', 'straight')
    assert code == 0, out
    return root, data, worker, out


@needs_gloo
def test_two_processes_hold_identical_weights(ddp):
    root, data, _, out = ddp
    ranks = [torch.load(root / 'straight_dump' / f'rank{r}.pt', weights_only=True) for r in (0, 1)]
    assert_same_weights(ranks[0]['model'], ranks[1]['model'])        # parameters and batch-norm buffers
    last = torch.load(root / 'runs' / 'straight' / 'last.pth', weights_only=True)
    assert_same_weights(last['model'], ranks[0]['model'])
    assert last['step'] == 4 and len(last['rng_ranks']) == 2
    # Rank 0 alone computes the trees' diagnostics (retrieval.diagnose).
    same = [{k: v for k, v in r['metrics'].items() if k not in ('eval_seconds', 'diagnostics')} for r in ranks]
    assert same[0] == same[1] and same[0]['step'] == 4
    # Rank 0 alone logs: one line per evaluation, one run folder, one 'done' line.
    lines = [json.loads(x) for x in (root / 'runs' / 'straight' / 'metrics.jsonl').read_text().splitlines()]
    assert [m['step'] for m in lines] == [2, 4]
    assert os.listdir(root / 'runs') == ['straight'] and out.count('done in') == 1
    assert 'x 2 processes' in out


@needs_gloo
def test_two_process_evaluation_counts_every_query_once(ddp):
    """Each rank ranked all 10 queries (its half, gathered), in order; the numbers equal a
    single-process evaluation of the checkpoint, which holds rank 0's model."""
    root, data, _, _ = ddp
    targets = dataset.build_datasets(experiment.data_config(options.parse_args('main', ['--data_root', str(data),
                                                                                     *SMALL])))[1].targets
    for r in (0, 1):
        evaluated = torch.load(root / 'straight_dump' / f'rank{r}.pt', weights_only=True)['evaluated']
        assert evaluated == [targets, targets]        # steps 2 and 4
    logged = [json.loads(x) for x in (root / 'runs' / 'straight' / 'metrics.jsonl').read_text().splitlines()][-1]
    alone = evaluate.main(['--checkpoint', str(root / 'runs' / 'straight' / 'last.pth'), '--data_root', str(data)])
    assert alone['queries'] == len(targets) == 10
    for k in ('acc@1', 'acc@10', 'mean_rank'):
        assert alone[k] == pytest.approx(logged[k]), k


@needs_gloo
def test_two_process_resume_is_exact(ddp):
    """Both processes killed in step 3, then --resume under torchrun: the same weights as the
    uninterrupted 2-process run."""
    root, data, worker, _ = ddp
    common = ['--data_root', data, *SMALL, '--max_steps', '4', '--eval_every', '2', '--output_dir', root / 'runs']
    code, out = torchrun(worker, root / 'killed_dump', *common, '--run_name', 'killed', crash=3)
    assert code != 0 and 'KeyboardInterrupt' in out
    assert torch.load(root / 'runs' / 'killed' / 'last.pth', weights_only=True)['step'] == 2
    code, out = torchrun(worker, root / 'resumed_dump', '--resume', root / 'runs' / 'killed')
    assert code == 0, out
    assert 'resumed' in out and out.count('resumed') == 1
    straight = torch.load(root / 'runs' / 'straight' / 'last.pth', weights_only=True)
    resumed = torch.load(root / 'runs' / 'killed' / 'last.pth', weights_only=True)
    assert resumed['step'] == 4
    assert_same_weights(straight['model'], resumed['model'], exact=False)
    ranks = [torch.load(root / 'resumed_dump' / f'rank{r}.pt', weights_only=True) for r in (0, 1)]
    assert_same_weights(ranks[0]['model'], ranks[1]['model'])
