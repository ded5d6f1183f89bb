"""Pairs per second through the pairwise head (evaluation mode), batched vs one pair at a time.

    python benchmarks/head_speed.py [--nodes 16] [--dim 512] [--pairs 2048] [--variant paper]

Prints figures only; nothing is asserted.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import build_head  # noqa: E402


def timed(fn, repeat=3):
    best = float('inf')
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--nodes', type=int, default=16)
    ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--pairs', type=int, default=2048)
    ap.add_argument('--single_pairs', type=int, default=32, help='pairs timed one at a time')
    ap.add_argument('--variant', default='paper')
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args()
    dev = torch.device(a.device)
    head = build_head(a.variant, dim=a.dim).to(dev).eval()
    n = a.nodes
    s = torch.randn(a.pairs, n, a.dim, device=dev)
    p = torch.randn(a.pairs, n, a.dim, device=dev)
    m = torch.ones(a.pairs, n, dtype=torch.bool, device=dev)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    print(f'{torch.get_num_threads()} threads on {dev}, {a.variant} head, D={a.dim}, {n} x {n} nodes')
    with torch.no_grad():
        k = a.single_pairs
        t = timed(lambda: ([head(s[i:i + 1], m[i:i + 1], p[i:i + 1], m[i:i + 1]) for i in range(k)], sync()), 1)
        print(f'one pair at a time : {1000 * t / k:8.2f} ms/pair  {k / t:9.0f} pairs/s')
        for chunk in sorted({c for c in (64, 256, 1024, a.pairs) if c <= a.pairs}):
            t = timed(lambda: ([head(s[i:i + chunk], m[i:i + chunk], p[i:i + chunk], m[i:i + chunk])
                                for i in range(0, a.pairs, chunk)], sync()))
            print(f'batched, chunk {chunk:5d}: {1000 * t / a.pairs:8.3f} ms/pair  {a.pairs / t:9.0f} pairs/s')


if __name__ == '__main__':
    main()
