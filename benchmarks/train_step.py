"""Seconds per training step and where they go, for the set-up that main.py's options describe.

    python benchmarks/train_step.py [any main.py option, e.g. --roi_size 7 --batch_size 16]

Times `main.train_step` on real batches of the chosen dataset (the embedded one by default),
then profiles one step with torch.profiler and prints its most expensive operators.
Prints figures only; nothing is asserted.
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import main  # noqa: E402
import options  # noqa: E402
from dataset import build_datasets, collate  # noqa: E402
from evaluate import resolve_device  # noqa: E402
from model import build_model  # noqa: E402


def run(argv, steps=4):
    args = options.parse_args(argv)
    device = resolve_device(args.device)
    main.seed_everything(args.seed)
    train_set, _ = build_datasets(args)
    b = args.batch_size
    batches = [collate([train_set[i] for i in range(k * b, (k + 1) * b)]) for k in range(steps + 1)]
    model = build_model(args).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = lambda batch: main.train_step(model, batch, optimizer, args.margin, device, args.negatives)
    step(batches[0])                                    # warm-up: allocations, oneDNN kernels
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    print(f'{args.backbone}, {args.image_size} px, RoIAlign {args.roi_size}x{args.roi_size}, batch {b}, '
          f'{args.negatives} negatives, {torch.get_num_threads()} threads on {device}: '
          f'{per_step:.3f} s per step ({b / per_step:.1f} triplets/s)')
    with profile() as prof:
        step(batches[1])
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=8))


if __name__ == '__main__':
    run(sys.argv[1:])
