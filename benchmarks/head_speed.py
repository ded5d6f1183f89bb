"""The pairwise head near the limit: pairs per second, GFLOP/s beside this machine's matmul, and
seconds per query for whole evaluations from cached node features (evaluation mode, greedy).

    python benchmarks/head_speed.py                          # everything, D = 256 then 512
    python benchmarks/head_speed.py --baseline 6dfa56e       # + the head of that git revision, same run
    python benchmarks/head_speed.py --dims 256 --sections matmul grid profile
    python benchmarks/head_speed.py --device cuda            # the same on a GPU (synchronised timing)

Sections (--sections, in this order):
  matmul   this machine's fp32 matmul GFLOP/s, measured in the same run: an addmm
           [4096 x D] @ [D x D] and a batched matmul of the head's attention shapes (best of N);
  grid     sketch nodes Ns in {10, 16} x photo nodes k in {8, 12, 16, 20}, per variant: ms/pair one
           pair at a time (the head on a batch of 1, and the float per-pair reference of
           reference.py), batched pairs/s, the head's FLOPs per pair (head_flops: counted from
           the algorithm, real nodes only), the achieved GFLOP/s and its % of the matmul figure;
  chunks   pairs/s against the pairs per pass (PairHead.eval_chunk; the baseline: per call),
           16 x 16 nodes;
  chair    a ChairV2-sized evaluation, 323 queries x 100 photos, k = 16, through
           CrossModalHierarchy.distance_matrix (2048 pairs per call, as evaluate.py) from cached node
           features (random, with ChairV2's test-split stroke counts): s/query, and peak memory.
           Each evaluation runs in a fresh child process. tracemalloc does not see torch's
           allocations, so the child's resident set is read from /proc/self/status: its peak
           (VmHWM, reset just before the evaluation through /proc/self/clear_refs) and how much
           that is above the process before it (features loaded; torch's libraries are most of
           the rest); elsewhere the lifetime ru_maxrss. On CUDA: torch.cuda.max_memory_allocated;
  gallery  200 photos (k = 16), 10-stroke sketches: s/query over many queries, and one query alone;
  kregions k = 8 / 12 / 16 / 20, 100 photos: s/query beside the paper's GPU figures;
  profile  torch.profiler's top operators of the batched head, 16 x 16 nodes, and the shares of
           matrix products, element-wise work, selection/reordering and framework overhead.

Timing: grid, chunks and matmul take the best of --repeat (--matmul_repeat) runs after a warm-up,
the baseline and the current head alternating so that both see the same load; an evaluation is one
timed run in a fresh child process after a small warm-up (best of --eval_repeat children). The
load average is printed with each section: figures taken under load are lower than a quiet
machine gives (with two threads much lower: an OpenMP thread that loses its core stalls the
other). Prints figures only; nothing is asserted.
"""
import argparse
import contextlib
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import head as current_head_module  # noqa: E402
from model import CrossModalHierarchy  # noqa: E402
from reference import ref_head  # noqa: E402

PAPER_K_SECONDS = {8: 0.16, 12: 0.36, 16: 0.67, 20: 1.06}   # s/query, 100 photos, their GPU
HEAD_FILES = ('head.py', 'attention.py', 'hierarchy.py', 'fast_eval.py')   # fast_eval.py: not in older revisions
HEAD_MODULES = tuple(name[:-3] for name in HEAD_FILES)


# ----------------------------------------------------------------------------- the FLOP count
def head_flops(ns, np_, dim, att_dim=128, variant='paper', method='hierarchy'):
    """Floating-point operations of the head on ONE (sketch, photo) pair with ns and np_ real
    nodes, counted from the algorithm (docs/method.md (M1)-(M7)); a multiply-add counts 2.

    Round r = 0 .. max(ns, np_) - 2 works on the real nodes that remain,
    n_s = max(ns - r, 1) and n_p = max(np_ - r, 1) (d = dim, a = att_dim):

      co-attention (M1-M4), skipped for method 'no_coattn':
        projections    2 (n_s + n_p) d a               S W_s, P W_p
        affinity       2 n_s n_p a                     A = (S W_s)(P W_p)^T
        attended       2 n_s n_p d + 2 n_p n_s d       softmax(A) P, softmax(A^T) S
        gate           2 (n_s + n_p) (2d) d            [X ; Y] W_G   (variant 'paper' only;
                                                       the product gate has no matrix product)
        update Z       2 (n_s + n_p) d d
      fusion (M5-M7), on each side with n > 1 nodes:
        compatibility  2 n d a + 2 [n (n - 1) / 2] a   X W_c, then the n(n-1)/2 candidate logits
                                                       ('released': no X W_c, logits 2 [n(n-1)/2] d)
        merge          2 (2d) d                        W_F [x_a ; x_b]

    Padding, pairs that have finished and element-wise work (softmax, sigmoid, gating, ReLU,
    residuals, about 6-10 operations per node and feature per round: under 2 % of the total at
    d = 256) are not counted. 'localised_coattn' (one co-attention round) is not covered."""
    d, a = dim, att_dim
    total = 0
    for r in range(max(ns, np_) - 1):
        n_s, n_p = max(ns - r, 1), max(np_ - r, 1)
        if method != 'no_coattn':
            total += 2 * (n_s + n_p) * d * a + 2 * n_s * n_p * a + 4 * n_s * n_p * d
            total += 2 * (n_s + n_p) * d * d * (3 if variant == 'paper' else 1)
        for n in (n_s, n_p):
            if n > 1:
                cand = n * (n - 1) // 2
                total += (2 * n * d * a + 2 * cand * a) if variant == 'paper' else 2 * cand * d
                total += 4 * d * d
    return total


# ----------------------------------------------------------------------------- helpers
def load_baseline(rev):
    """The head modules of git revision `rev`, imported under their own names in a temp folder
    (so that both heads live in one process). Returns the baseline's `head` module."""
    folder = Path(tempfile.mkdtemp(prefix='head_baseline_'))
    for name in HEAD_FILES:
        shown = subprocess.run(['git', 'show', f'{rev}:{name}'], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode and name == 'fast_eval.py':
            continue
        shown.check_returncode()
        (folder / name).write_text(shown.stdout)
    saved = {m: sys.modules.pop(m) for m in HEAD_MODULES if m in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module('head')
    finally:
        sys.path.remove(str(folder))
        for m in HEAD_MODULES:
            sys.modules.pop(m, None)
        sys.modules.update(saved)
    return module


class Timer:
    """Best-of-N wall-clock timing, synchronised on CUDA."""

    def __init__(self, device):
        self.sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def once(self, fn):
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t

    def best(self, fns, repeat):
        """fns: {name: fn}; runs them alternately `repeat` times after one warm-up each.
        Returns {name: best seconds}."""
        for fn in fns.values():
            fn()
        best = {k: float('inf') for k in fns}
        for _ in range(repeat):
            for k, fn in fns.items():
                best[k] = min(best[k], self.once(fn))
        return best


def load():
    return ' '.join(f'{v:.2f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'


def section(title):
    print(f'\n== {title}  (load average {load()})', flush=True)


def pairs_batch(b, ns, np_, dim, device, seed=0):
    """b pairs of non-negative random nodes (like ReLU region features) with all nodes real."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(b, ns, dim, generator=g).to(device)
    p = torch.rand(b, np_, dim, generator=g).to(device)
    return (s, torch.ones(b, ns, dtype=torch.bool, device=device),
            p, torch.ones(b, np_, dtype=torch.bool, device=device))


# Strokes per test sketch of QMUL-Chair-V2 (323 sketches; `python prepare.py dataset --dataset ChairV2
# --summary` on the released data: min 1 / median 10 over both splits; test split min 2 / median 9
# / mean 9.5 / max 15).
CHAIRV2_TEST_STROKES = {2: 6, 3: 14, 4: 15, 5: 17, 6: 31, 7: 28, 8: 25, 9: 32, 10: 26, 11: 20, 12: 16,
                        13: 23, 14: 10, 15: 60}


def stroke_counts(q, mode, seed=0):
    """Sketch node counts of q queries in a fixed shuffled order: 'chair' = drawn from ChairV2's
    test-split stroke counts (exactly them for q = 323), or a fixed number of strokes."""
    if mode != 'chair':
        return torch.full((q,), int(mode), dtype=torch.long)
    counts = torch.tensor([n for n, c in CHAIRV2_TEST_STROKES.items() for _ in range(c)])
    g = torch.Generator().manual_seed(seed)
    if q <= len(counts):
        return counts[torch.randperm(len(counts), generator=g)[:q]]
    return counts[torch.randint(len(counts), (q,), generator=g)]


def node_features(counts, dim, device, seed=0):
    """Cached node features {'nodes': [M, N, D], 'mask': [M, N]} with counts[i] real nodes."""
    g = torch.Generator().manual_seed(seed)
    width = int(counts.max())
    mask = torch.arange(width)[None] < counts[:, None]
    nodes = torch.rand(len(counts), width, dim, generator=g) * mask[..., None]
    return {'nodes': nodes.to(device), 'mask': mask.to(device)}


def build(module, variant, dim, att_dim, device, state=None):
    torch.manual_seed(0)
    head = module.build_head(variant, dim=dim, att_dim=att_dim).to(device).eval()
    if state is not None:
        head.load_state_dict(state)
    return head


def heads(args, variant, dim, device):
    """{'new': current head, 'base': baseline head with the same weights (with --baseline)}."""
    out = {'new': build(current_head_module, variant, dim, args.att_dim, device)}
    if args.baseline_module is not None:
        out['base'] = build(args.baseline_module, variant, dim, args.att_dim, device, out['new'].state_dict())
    return out


# ----------------------------------------------------------------------------- sections
def matmul_gflops(args, dim, device, timer):
    """{name: GFLOP/s} of fp32 matrix products at this D, best of args.matmul_repeat."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, dim, generator=g).to(device)
    w = torch.randn(dim, dim, generator=g).to(device)
    bias = torch.randn(dim, generator=g).to(device)
    q = torch.randn(1024, 16, args.att_dim, generator=g).to(device)
    att = torch.rand(1024, 16, 16, generator=g).to(device)
    v = torch.randn(1024, 16, dim, generator=g).to(device)
    flops = {'addmm': 2 * 4096 * dim * dim, 'bmm_affinity': 2 * 1024 * 16 * 16 * args.att_dim,
             'bmm_attended': 2 * 1024 * 16 * 16 * dim}
    fns = {'addmm': lambda: torch.addmm(bias, x, w),
           'bmm_affinity': lambda: torch.bmm(q, q.transpose(1, 2)),
           'bmm_attended': lambda: torch.bmm(att, v)}
    best = timer.best(fns, args.matmul_repeat)
    return {k: flops[k] / best[k] / 1e9 for k in fns}


def run_matmul(args, device, timer):
    section(f'fp32 matmul throughput of this machine (best of {args.matmul_repeat})')
    for dim in args.dims:
        m = matmul_gflops(args, dim, device, timer)
        args.matmul[dim] = m['addmm']
        print(f'D={dim}: addmm [4096 x {dim}] @ [{dim} x {dim}]: {m["addmm"]:7.1f} GFLOP/s   '
              f'bmm [1024 x 16 x {args.att_dim}] @ [.. x {args.att_dim} x 16]: {m["bmm_affinity"]:6.1f}   '
              f'bmm [1024 x 16 x 16] @ [.. x 16 x {dim}]: {m["bmm_attended"]:6.1f}')
    print('% of matmul below = achieved GFLOP/s / the addmm figure at the same D.')


def one_at_a_time(head, batch, n):
    """The head on the first n pairs of batch = (s, s_mask, p, p_mask), one call per pair."""
    for i in range(n):
        head(*(t[i:i + 1] for t in batch))


def in_calls(head, batch, c, eval_chunk=None):
    """The head on all pairs of batch, c pairs a call (and PairHead.eval_chunk, if given)."""
    if eval_chunk is not None:
        head.eval_chunk = eval_chunk
    for i in range(0, len(batch[0]), c):
        head(*(t[i:i + c] for t in batch))


def reference(ref, head, batch, n, ns, k):
    """reference.py's per-pair head on the first n pairs."""
    s, _, p, _ = batch
    for i in range(n):
        ref(head, s[i, :ns], p[i, :k])


def run_grid(args, device, timer):
    ref = ref_head if device.type == 'cpu' else None
    for dim in args.dims:
        for variant in args.variants:
            section(f'{variant} head, D={dim}, att_dim={args.att_dim}: one pair at a time vs batched '
                    f'({args.pairs} pairs a call)')
            hs = heads(args, variant, dim, device)
            cols = '  base pairs/s  speed-up' if 'base' in hs else ''
            print(f' Ns   k | ref ms/pair | B=1 ms/pair | batched pairs/s{cols} | MFLOP/pair | GFLOP/s | % matmul')
            for ns in args.sketch_nodes:
                for k in args.photo_nodes:
                    batch = pairs_batch(args.pairs, ns, k, dim, device)
                    with torch.no_grad():
                        one = args.single_pairs
                        t1 = timer.best({'x': partial(one_at_a_time, hs['new'], batch, one)}, 1)['x'] / one
                        tref = float('nan')
                        if ref is not None and args.ref_pairs:
                            fn = partial(reference, ref, hs['new'], batch, args.ref_pairs, ns, k)
                            tref = timer.best({'x': fn}, 1)['x'] / args.ref_pairs
                        fns = {name: partial(h, *batch) for name, h in hs.items()}
                        best = timer.best(fns, args.repeat)
                    flops = head_flops(ns, k, dim, args.att_dim, variant)
                    rate = args.pairs / best['new']
                    gf = rate * flops / 1e9
                    extra = ''
                    if 'base' in best:
                        extra = f'  {args.pairs / best["base"]:12.0f}  {best["base"] / best["new"]:7.2f}x'
                    print(f' {ns:2d}  {k:2d} | {1000 * tref:11.2f} | {1000 * t1:11.2f} | {rate:15.0f}{extra} | '
                          f'{flops / 1e6:10.1f} | {gf:7.1f} | {100 * gf / args.matmul[dim]:7.1f} %', flush=True)


def run_chunks(args, device, timer):
    total = max(args.chunk_sizes)
    for dim in args.dims:
        section(f'pairs per pass, paper head, D={dim}, 16 x 16 nodes, {total} pairs: the current head in one '
                f'call with PairHead.eval_chunk = c; the baseline called c pairs at a time')
        hs = heads(args, 'paper', dim, device)
        batch = pairs_batch(total, 16, 16, dim, device)
        flops = head_flops(16, 16, dim, args.att_dim, 'paper')
        with torch.no_grad():
            for c in args.chunk_sizes:
                fns = {'new': partial(in_calls, hs['new'], batch, total, c)}
                if 'base' in hs:
                    fns['base'] = partial(in_calls, hs['base'], batch, c)
                best = timer.best(fns, args.repeat)
                line = ' | '.join(f'{name}: {total / t:7.0f} pairs/s ({total / t * flops / 1e9:6.1f} GFLOP/s)'
                                  for name, t in best.items())
                print(f'{c:5d} pairs a pass | {line}', flush=True)


def evaluation(module_name, variant, dim, att_dim, q_counts, photos, k, device, chunk, rev=None):
    """Time one whole evaluation from cached node features; runs in a child process (fresh peak
    memory). Returns a dict of figures."""
    spec = {'module': module_name, 'rev': rev, 'variant': variant, 'dim': dim, 'att_dim': att_dim,
            'counts': q_counts.tolist(), 'photos': photos, 'k': k, 'device': str(device), 'chunk': chunk,
            'threads': torch.get_num_threads()}
    cmd = [sys.executable, __file__, '--child', json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(spec):
    """The child process of `evaluation`: prints one JSON line."""
    torch.set_num_threads(spec['threads'])
    device = torch.device(spec['device'])
    module = current_head_module if spec['module'] == 'new' else load_baseline(spec['rev'])
    head = build(module, spec['variant'], spec['dim'], spec['att_dim'], device)
    model = CrossModalHierarchy(None, None, head).eval()
    counts = torch.tensor(spec['counts'])
    s = node_features(counts, spec['dim'], device, seed=1)
    p = node_features(torch.full((spec['photos'],), spec['k']), spec['dim'], device, seed=2)
    timer = Timer(device)
    # Warm-up on a corner (thread pools, kernels, first allocations), as a long-running service has.
    model.distance_matrix({k: v[:2] for k, v in s.items()}, {k: v[:64] for k, v in p.items()},
                          chunk=spec['chunk'])
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    rss_before = resident_mb('VmRSS')
    reset_peak = reset_peak_rss()
    seconds = timer.once(lambda: model.distance_matrix(s, p, chunk=spec['chunk']))
    peak = resident_mb('VmHWM') if reset_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {'seconds': seconds, 'queries': len(counts), 'rss_before_mb': rss_before, 'peak_rss_mb': peak,
           'peak_exact': reset_peak}
    if device.type == 'cuda':
        out['cuda_peak_mb'] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    print(json.dumps(out))


def resident_mb(field):
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc/self/status (nan elsewhere)."""
    with contextlib.suppress(OSError), open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def reset_peak_rss():
    """Reset this process's peak resident set (Linux: '5' to /proc/self/clear_refs). Returns
    whether it worked; if not, the peak is the whole process's ru_maxrss."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def eval_flops(counts, photos, k, dim, att_dim, variant):
    per = {int(n): head_flops(int(n), k, dim, att_dim, variant) for n in set(counts.tolist())}
    return sum(per[int(n)] for n in counts) * photos


def run_evaluations(args, device, which):
    versions = [('new', None)] + ([('base', args.baseline)] if args.baseline else [])
    for dim in args.dims:
        for variant in args.variants:
            if which == 'chair':
                counts = stroke_counts(323, args.strokes)
                section(f'ChairV2-sized evaluation, {variant} head, D={dim}: 323 queries x 100 photos, k = 16, '
                        f'sketch nodes {describe(counts)}, {args.eval_chunk} pairs a call')
                jobs = [('323 x 100', counts, 100, 16)]
            elif which == 'gallery':
                counts = torch.full((args.gallery_queries,), 10)
                section(f'200-photo gallery, {variant} head, D={dim}: 10-stroke sketches, k = 16, '
                        f'no first stage, {args.eval_chunk} pairs a call')
                jobs = [(f'{args.gallery_queries} queries x 200', counts, 200, 16),
                        ('1 query x 200', counts[:1], 200, 16)]
            else:
                counts = stroke_counts(args.k_queries, args.strokes)
                section(f'k regions, {variant} head, D={dim}: {args.k_queries} queries x 100 photos, sketch '
                        f'nodes {describe(counts)}; the paper: VGG-16 features (D=512) on their GPU')
                jobs = [(f'k = {k:2d}', counts, 100, k) for k in (8, 12, 16, 20)]
            for label, counts_, photos, k in jobs:
                flops = eval_flops(counts_, photos, k, dim, args.att_dim, variant)
                parts = []
                for name, rev in versions:
                    best = None
                    for _ in range(args.eval_repeat):
                        r = evaluation(name, variant, dim, args.att_dim, counts_, photos, k, device,
                                       args.eval_chunk, rev)
                        best = r if best is None or r['seconds'] < best['seconds'] else best
                    if 'cuda_peak_mb' in best:
                        mem = f'peak +{best["cuda_peak_mb"]:.0f} MiB CUDA'
                    else:
                        extra = best['peak_rss_mb'] - best['rss_before_mb']
                        mem = (f'peak RSS {best["peak_rss_mb"]:.0f} MiB, +{extra:.0f} MiB over the process before it'
                               + ('' if best['peak_exact'] else ' (process-lifetime peak)'))
                    gf = flops / best['seconds'] / 1e9
                    pct = f' = {100 * gf / args.matmul[dim]:.0f} % of matmul' if dim in args.matmul else ''
                    parts.append(f'{name}: {best["seconds"] / len(counts_):.3f} s/query '
                                 f'({best["seconds"]:.1f} s, {gf:.1f} GFLOP/s{pct}, {mem})')
                paper = f' | paper GPU {PAPER_K_SECONDS[k]:.2f} s/query' if which == 'kregions' else ''
                print(f'{label}: ' + ' | '.join(parts) + paper, flush=True)


def describe(counts):
    c = counts.float()
    return f'min {int(c.min())} / median {int(c.median())} / mean {c.mean():.1f} / max {int(c.max())}'


GROUPS = {   # operator -> what it does in the head's fast path
    'matrix products': ('aten::addmm', 'aten::addmm_', 'aten::mm', 'aten::bmm'),
    'element-wise (gate, residual, ReLU, softmax, bias copies)': (
        'aten::add_', 'aten::mul', 'aten::mul_', 'aten::sigmoid_', 'aten::clamp_min_', 'aten::clamp_min',
        'aten::copy_', 'aten::_softmax', 'aten::add'),
    'selection and reordering (argmax, masks, gathers)': (
        'aten::index_select', 'aten::index_copy_', 'aten::index', 'aten::argmax', 'aten::masked_fill_',
        'aten::masked_fill'),
}


def run_profile(args, device):
    from torch.profiler import ProfilerActivity, profile
    for dim in args.dims:
        for variant in args.variants:
            section(f'torch.profiler, {variant} head, D={dim}, 16 x 16 nodes, {args.pairs} pairs a call')
            h = build(current_head_module, variant, dim, args.att_dim, device)
            s, sm, p, pm = pairs_batch(args.pairs, 16, 16, dim, device)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
            with torch.no_grad():
                h(s, sm, p, pm)
                with profile(activities=activities) as prof:
                    h(s, sm, p, pm)
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
            key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
            events = prof.key_averages()
            print(events.table(sort_by=key, row_limit=args.profile_rows))
            total = sum(getattr(e, key) for e in events)
            shares = {g: sum(getattr(e, key) for e in events if e.key in ops) for g, ops in GROUPS.items()}
            shares['framework (views, small ops, dispatch)'] = total - sum(shares.values())
            print('where the time goes (share of the profiled self time): ' + '; '.join(
                f'{g} {100 * v / total:.0f} %' for g, v in shares.items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dims', type=int, nargs='+', default=[256, 512])
    ap.add_argument('--att_dim', type=int, default=128)
    ap.add_argument('--variants', nargs='+', default=['paper', 'released'])
    ap.add_argument('--sections', nargs='+', default=['matmul', 'grid', 'chunks', 'chair', 'gallery',
                                                      'kregions', 'profile'])
    ap.add_argument('--baseline', default=None, help='git revision whose head.py / attention.py / '
                    'hierarchy.py to time beside the current ones (e.g. 6dfa56e, the head before the fast path)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    ap.add_argument('--sketch_nodes', type=int, nargs='+', default=[10, 16])
    ap.add_argument('--photo_nodes', type=int, nargs='+', default=[8, 12, 16, 20])
    ap.add_argument('--pairs', type=int, default=512, help='pairs per call in the grid and profile')
    ap.add_argument('--single_pairs', type=int, default=8, help='pairs timed one at a time (head, B=1)')
    ap.add_argument('--ref_pairs', type=int, default=2, help='pairs through the tests\' per-pair reference (0: skip)')
    ap.add_argument('--chunk_sizes', type=int, nargs='+', default=[64, 128, 256, 512, 1024])
    ap.add_argument('--eval_chunk', type=int, default=2048,
                    help='pairs a call in the evaluations (evaluate.py --pair_chunk)')
    ap.add_argument('--strokes', default='chair', help="sketch nodes of the chair / kregions queries: 'chair' "
                    "(ChairV2's test-split stroke counts) or a fixed number")
    ap.add_argument('--gallery_queries', type=int, default=20)
    ap.add_argument('--k_queries', type=int, default=40)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--eval_repeat', type=int, default=1, help='child runs per evaluation (best is shown)')
    ap.add_argument('--matmul_repeat', type=int, default=20)
    ap.add_argument('--profile_rows', type=int, default=15)
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timer = Timer(device)
    args.baseline_module = load_baseline(args.baseline) if args.baseline else None
    args.matmul = {}
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open('/proc/cpuinfo') as f:
        cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}'
          + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else '')
          + f', CPU {cpu}, {os.cpu_count()} logical CPUs; evaluation mode, no autograd; '
          f'PairHead.eval_chunk {current_head_module.PairHead.eval_chunk}; baseline: {args.baseline or "none"}')
    if any(s in args.sections for s in ('matmul', 'grid', 'chair', 'gallery', 'kregions')):
        run_matmul(args, device, timer)
    if 'grid' in args.sections:
        run_grid(args, device, timer)
    if 'chunks' in args.sections:
        run_chunks(args, device, timer)
    for which in ('chair', 'gallery', 'kregions'):
        if which in args.sections:
            run_evaluations(args, device, which)
    if 'profile' in args.sections:
        run_profile(args, device)
    print(f'\ndone (load average {load()})')


if __name__ == '__main__':
    main()
