"""Train a model with the triplet loss (arXiv 2007.15103; docs/method.md, (M9)) and evaluate it.

    python main.py                                  # embedded dataset, light backbone, CPU
    python main.py --dataset ChairV2 --data_root DATA --backbone vgg16   # the paper's set-up
    torchrun --nproc_per_node=4 main.py --dataset ShoeV2 --data_root DATA --backbone vgg16

A run folder (--output_dir/--run_name; only --resume writes into an existing one) receives
args.json, metrics.jsonl, best.pth (by acc@1), last.pth, retrieval figures and TensorBoard logs
(tb/). --resume RUN continues an interrupted run exactly.
"""
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from torch.nn.parallel import DistributedDataParallel

import experiment
import options
import runtime
from backbones import PretrainedWeightsError
from checkpoint import CheckpointError, load_checkpoint, model_config
from feature_cache import FeatureCacheError
from files import DatasetError, describe_os_error
from train import Trainer, TrainingStopped


def run_folder(args, resuming):
    """A fresh folder for this run: --run_name (refused if it exists) or a time stamp made unique."""
    if resuming:
        return Path(args.resume if Path(args.resume).is_dir() else Path(args.resume).parent)
    out = Path(args.output_dir)
    base = args.run_name or time.strftime('%Y%m%d-%H%M%S') + f'_{args.dataset}_{args.backbone}_{args.method}'
    try:
        out.mkdir(parents=True, exist_ok=True)
        for k in range(1000):
            path = out / (base if k == 0 else f'{base}-{k}')
            try:
                path.mkdir()
                return path
            except FileExistsError:
                if args.run_name:
                    raise SystemExit(f'error: run folder {path} exists; choose another --run_name or '
                                     f'continue it with --resume {path}') from None
    except PermissionError:
        raise SystemExit(f'error: cannot create a run folder in {out}: no permission (choose another '
                         f'--output_dir)') from None
    except OSError as e:
        raise SystemExit(f'error: cannot create a run folder in {out}: {e.strerror}') from None
    raise SystemExit(f'error: no free run folder name for {base} in {out}')


# Options that are the data layer's but do not change the data a run sees.
NOT_DATA = ('help', 'workers', 'image_cache')


def refuse_other_data(stored, explicit, path):
    """--resume continues a run on its own data: a typed --dataset, --data_root or other data option
    that differs from the stored one is refused, naming it."""
    def same(key, a, b):
        if key == 'data_root':
            return os.path.abspath(str(a)) == os.path.abspath(str(b))
        if key == 'synthetic_size':
            return sorted(map(tuple, a or [])) == sorted(map(tuple, b or []))
        return a == b
    names = [a.dest for a in options.data_part()._actions if a.dest not in NOT_DATA]
    changed = [k for k in names if k in explicit and not same(k, explicit[k], stored.get(k))]
    if changed:
        raise CheckpointError(f'{path}: --resume continues the run on its own data; '
                              + ', '.join(f'--{k} {explicit[k]} (stored: {stored.get(k)})' for k in changed)
                              + f' would change it (start a new run from its weights with --init_from {path})')


def drop_failed_run(run_dir, resuming):
    """A fresh run folder that holds no checkpoint and no metrics when the run fails is removed;
    returns what to add to the error line then (else '')."""
    if run_dir is None or resuming or runtime.world()[0] != 0 or not run_dir.is_dir():
        return ''
    if not any(run_dir.glob('*.pth')) and not (run_dir / 'metrics.jsonl').exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        return f'; it had saved nothing yet, so its folder {run_dir} was removed'
    return ''


def setup(argv):
    """(args, resume state or None, --init_from's checkpoint dict or None, run folder, device) for
    this process."""
    args = options.parse_args('main', argv)
    rank, world, device = runtime.init_distributed(args.device)
    if args.batch_size % world:
        raise SystemExit(f'error: --batch_size {args.batch_size} is the global batch; it must be divisible by '
                         f'the {world} processes')
    if args.negatives != 'sampled' and args.batch_size // world < 2:
        raise SystemExit(f'error: --negatives {args.negatives} takes the negatives from the other sketches of a '
                         f'batch; a batch of {args.batch_size // world} per process has none (use --batch_size >= '
                         f'{2 * world} or --negatives sampled)')
    state = init_state = None
    explicit = options.explicit_args('main', argv)
    if args.resume and args.init_from:
        raise SystemExit('error: --resume continues a run, --init_from starts a new one; give one of them')
    if args.resume:
        path, state, args = load_checkpoint(args.resume, args, explicit)
        refuse_other_data(state['args'], explicit, path)
    elif args.init_from:   # a new run on this command line's data, with the model (options) of the checkpoint
        _, init_state, init = load_checkpoint(args.init_from, args, explicit)
        for k, v in asdict(model_config(init_state, args.init_from, init)).items():
            setattr(args, k, v)
        args.pretrained = 'none'
    problem = runtime.check_amp(args.amp, device)
    if problem:
        raise SystemExit(f'error: {problem}')
    runtime.tune_cuda(device, args.tf32)
    run_dir = runtime.broadcast_object(run_folder(args, state is not None) if rank == 0 else None)
    return args, state, init_state, run_dir, device


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    run_dir = state = None
    try:
        args, state, init_state, run_dir, device = setup(argv)
        rank, world = runtime.world()
        s = experiment.setup(args, device, init_state)
        train_set, test = s.train_set, s.test
        s.model.every_parameter = world > 1       # DDP needs every parameter's gradient in every step
        ddp = DistributedDataParallel(s.model, device_ids=[device.index] if device.type == 'cuda' else None) \
            if world > 1 else None
        trainer = Trainer(args, s.model, s.loss, s.optimizer, train_set, test, run_dir, device, ddp)
        if trainer.steps_per_epoch == 0:
            raise SystemExit(f'error: {len(train_set)} training sketches, fewer than --batch_size {args.batch_size}')
        if state is not None:
            trainer.restore(state)
        if rank == 0:
            if state is not None:
                print(f'resumed {run_dir} at step {trainer.step}')
            (run_dir / 'args.json').write_text(json.dumps(vars(args), indent=1))
            print(f'run folder: {run_dir}\n{len(train_set)} training sketches, {len(test.queries)} test sketches, '
                  f'{len(test.gallery)} gallery photos; {trainer.total_steps} steps of {args.batch_size} on '
                  f'{device}' + (f' x {world} processes' if world > 1 else ''))
        t_start = time.time()
        m = trainer.run()
    except TrainingStopped as e:    # its message names the run's checkpoints: say when there are none
        raise SystemExit(f'error: {e}{drop_failed_run(run_dir, state is not None)}') from None
    except (DatasetError, PretrainedWeightsError, CheckpointError, FeatureCacheError) as e:
        drop_failed_run(run_dir, state is not None)
        raise SystemExit(f'error: {e}') from None
    except SystemExit:
        drop_failed_run(run_dir, state is not None)
        raise
    except OSError as e:   # a run folder that became unwritable, a full disk while logging
        drop_failed_run(run_dir, state is not None)
        raise SystemExit(f'error: {getattr(e, "filename", None) or run_dir or "the run folder"}: '
                         f'{describe_os_error(e)}') from None
    runtime.finish()
    if rank == 0:
        print(f'done in {time.time() - t_start:.0f} s: {args.dataset} test acc@1 {100 * m["acc@1"]:.2f}%  '
              f'acc@10 {100 * m["acc@10"]:.2f}%  (chance acc@1 {100 / len(test.gallery):.2f}%; '
              f'best acc@1 {100 * trainer.best:.2f}%)  checkpoints in {run_dir}')
    return m


if __name__ == '__main__':
    main()
