"""Two-stage retrieval: accuracy and milliseconds per query against M, and the first stage at scale.

    python benchmarks/retrieval_speed.py --checkpoint runs/RUN/last.pth [--data_root DATA] [--ms 10 20 50]
    python benchmarks/retrieval_speed.py --scale [--dim 64]

With --checkpoint (a model trained with --first_stage_dim > 0): the test split's features are
computed once (not timed), then for each M the ranking of every query is timed - the first stage
on the whole gallery plus the pairwise head on its top M - and acc@1 / acc@10 are printed beside
the full pairwise ranking (M = 0). With --scale: the first stage alone (one matrix product and a
top-k) against 1k / 10k / 100k random unit vectors: ms per query and the gallery's memory.
Prints figures only; nothing is asserted.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import retrieval  # noqa: E402
import runtime  # noqa: E402
from experiment import load_test  # noqa: E402


def timed(fn, repeat=3):
    best, out = float('inf'), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@torch.no_grad()
def two_stage(a):
    device = runtime.resolve_device(a.device)
    overrides = {k: v for k, v in (('data_root', a.data_root),) if v}
    model, args, test, _, path = load_test(a.checkpoint, overrides, device)
    if not model.has_first_stage:
        raise SystemExit(f'error: {path} has no first stage (train with --first_stage_dim > 0)')
    s, targets = retrieval.encode_set(model, test.queries, 'sketch', args.eval_batch_size, device)
    p, _ = retrieval.encode_set(model, test.gallery, 'photo', args.eval_batch_size, device)
    q, g = len(test.queries), len(test.gallery)
    print(f'{path}: {args.dataset}, {q} queries x {g} photos, {torch.get_num_threads()} threads on {device}')
    print('| M | acc@1 | acc@10 | mean rank | ms / query | speed-up |\n|---|---|---|---|---|---|')
    full_time = None
    for m in [0, *a.ms]:
        seconds, scores = timed(lambda: retrieval.rank_scores(model, s, p, m, args.pair_chunk), a.repeat)
        metrics, _ = retrieval.retrieval_metrics(scores.cpu(), targets)
        full_time = full_time or seconds
        print(f'| {m or "full"} | {100 * metrics["acc@1"]:.2f} | {100 * metrics["acc@10"]:.2f} | '
              f'{metrics["mean_rank"]:.2f} | {1000 * seconds / q:.1f} | {full_time / seconds:.1f}x |')


def scale(a):
    """The first stage alone: ms per query (batches of 32 queries) and memory for N gallery vectors."""
    print(f'first stage alone, {a.dim}-d float32 embeddings, {torch.get_num_threads()} threads')
    print('| gallery | ms / query | gallery memory |\n|---|---|---|')
    for n in (1_000, 10_000, 100_000):
        gallery = torch.nn.functional.normalize(torch.randn(n, a.dim), dim=1)
        queries = torch.nn.functional.normalize(torch.randn(32, a.dim), dim=1)
        seconds, _ = timed(lambda: torch.cdist(queries, gallery).topk(min(50, n), largest=False), a.repeat)
        print(f'| {n:,} | {1000 * seconds / len(queries):.3f} | {gallery.numel() * 4 / 2 ** 20:.1f} MiB |')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--checkpoint')
    ap.add_argument('--data_root')
    ap.add_argument('--ms', type=int, nargs='+', default=[10, 20, 50])
    ap.add_argument('--scale', action='store_true')
    ap.add_argument('--dim', type=int, default=64)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--device', default='auto')
    a = ap.parse_args(argv)
    if a.scale:
        scale(a)
    if a.checkpoint:
        two_stage(a)


if __name__ == '__main__':
    main()
