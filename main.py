"""Train a model with the triplet loss (arXiv 2007.15103; docs/method.md, (M9)) and evaluate it.

    python main.py                                  # embedded dataset, light backbone, CPU
    python main.py --dataset ChairV2 --data_root DATA --backbone vgg16   # the paper's set-up
    torchrun --nproc_per_node=4 main.py --dataset ShoeV2 --data_root DATA --backbone vgg16

A run folder (--output_dir/--run_name; only --resume writes into an existing one) receives
args.json, metrics.jsonl, best.pth (by acc@1), last.pth, retrieval figures and TensorBoard logs
(tb/). --resume RUN continues an interrupted run exactly.
"""
import json
import sys
import time
from pathlib import Path

from torch.nn.parallel import DistributedDataParallel

import experiment
import options
import runtime
from backbones import PretrainedWeightsError
from checkpoint import CheckpointError, load_checkpoint
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


def setup(argv):
    """(args, resume state or None, run folder, device) for this process."""
    args = options.parse_args('main', argv)
    rank, world, device = runtime.init_distributed(args.device)
    if args.batch_size % world:
        raise SystemExit(f'error: --batch_size {args.batch_size} is the global batch; it must be divisible by '
                         f'the {world} processes')
    state = None
    if args.resume:
        explicit = options.explicit_args('main', argv)
        _, state, args = load_checkpoint(args.resume, args, explicit)
    if args.amp != 'none' and device.type != 'cuda':
        raise SystemExit(f'error: --amp {args.amp} needs a CUDA device (running on {device})')
    run_dir = runtime.broadcast_object(run_folder(args, state is not None) if rank == 0 else None)
    return args, state, run_dir, device


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    run_dir = None
    try:
        args, state, run_dir, device = setup(argv)
        rank, world = runtime.world()
        s = experiment.setup(args, device)
        train_set, test = s.train_set, s.test
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
    except (DatasetError, PretrainedWeightsError, CheckpointError, TrainingStopped, FeatureCacheError) as e:
        raise SystemExit(f'error: {e}') from None
    except OSError as e:   # a run folder that became unwritable, a full disk while logging
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
