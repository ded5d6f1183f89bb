"""Seconds per training step and where they go, for the set-up that main.py's options describe.

    python benchmarks/train_step.py [any main.py option, e.g. --dataset ChairV2 --data_root DATA]

Loads real batches of the chosen dataset (the embedded one by default) through the training
DataLoader - the first pass fills the image cache, a second pass shows the cached data time -
then times `train.train_step` on them (after one untimed step per batch, which also fills the
frozen trunk's feature cache with --freeze_backbone) and profiles one step (torch.profiler, top
operators).
Prints figures only; nothing is asserted.
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import experiment  # noqa: E402
import options  # noqa: E402
import runtime  # noqa: E402
import train  # noqa: E402
from dataset import collate  # noqa: E402


def load_batches(train_set, args, steps):
    """(batches, seconds per batch) of `steps` batches through the training DataLoader."""
    sampler = train.EpochSampler(len(train_set), args.batch_size, args.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                                         collate_fn=collate, num_workers=args.workers, drop_last=True)
    start, batches = time.perf_counter(), []
    for batch in loader:
        batches.append(batch)
        if len(batches) == steps:
            break
    return batches, (time.perf_counter() - start) / len(batches)


def run(argv, steps=4):
    args = options.parse_args('main', argv)
    device = runtime.resolve_device(args.device)
    s = experiment.setup(args, device)
    model, loss_fn, optimizer = s.model.train(), s.loss, s.optimizer
    batches, cold = load_batches(s.train_set, args, steps + 1)
    _, warm = load_batches(s.train_set, args, steps + 1)

    def step(batch):
        return train.train_step(model, loss_fn, batch, optimizer, device, args.aux_weight, args.amp)
    fill = time.perf_counter()
    for batch in batches:      # warm-up: allocations, oneDNN kernels, and the frozen trunk's cache
        step(batch)
    fill = (time.perf_counter() - fill) / len(batches)
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    print(f'{args.method}, {args.backbone} ({args.feature_layer}), {args.image_size} px, RoIAlign '
          f'{args.roi_size}x{args.roi_size}, batch {args.batch_size}, {args.negatives} negatives, '
          f'{torch.get_num_threads()} threads on {device}, {args.workers} workers:')
    print(f'  data   {cold:.3f} s per batch (first pass, cache filling), {warm:.3f} s (cached)')
    if args.freeze_backbone:
        print(f'  frozen: {args.freeze_backbone} stages; first pass {fill:.3f} s per step (cache filling)')
    print(f'  compute {per_step:.3f} s per step ({args.batch_size / per_step:.1f} triplets/s)')
    with profile() as prof:
        step(batches[1])
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=8))


if __name__ == '__main__':
    run(sys.argv[1:])
