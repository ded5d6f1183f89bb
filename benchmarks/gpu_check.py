"""The GPU path's figures (benchmarks/gpu_check.sh runs it; also on a CPU with tiny settings).

    python benchmarks/gpu_check.py train --device cuda --backbones vgg16 mobilenet_v2 --amps none bf16 fp16
    python benchmarks/gpu_check.py eval --device cuda [--queries 323 --gallery 100 --nodes 16 --dim 512]

train: per backbone and --amp, training steps of the proposed model (--pretrained none) on
random images with 16 random boxes each (no data, no disk): steps per second, peak GPU memory,
host reads per step (runtime.HostReads: each a synchronisation on CUDA) and the evaluation
encode + distances on the same kind of batch, with the loss and distances checked finite.
eval: the evaluation's seconds per query at ChairV2's size (323 sketches x 100 photos, up to 16
nodes a side, D = 512: the paper's 0.67 s a query beside it), and the head's share of the
device's matrix-product throughput (the head's FLOPs from torch.utils.flop_counter over its
time, against a large float32 matmul's FLOP/s). Prints figures; asserts only finiteness.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import options  # noqa: E402
import runtime  # noqa: E402
import train  # noqa: E402
from losses import TripletLoss  # noqa: E402
from methods import build_model  # noqa: E402

PAPER_SECONDS_PER_QUERY = 0.67


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def random_inputs(b, size, n, device, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, n, 2, generator=g) * size * 0.7
    wh = size * 0.05 + torch.rand(b, n, 2, generator=g) * size * 0.25
    counts = torch.randint(2, n + 1, (b, 1), generator=g)
    mask = torch.arange(n)[None] < counts
    inputs = {'image': torch.randn(b, 3, size, size, generator=g), 'boxes': torch.cat([xy, xy + wh], 2) * mask[..., None],
              'mask': mask}
    return {k: v.to(device) for k, v in inputs.items()}


def random_batch(b, size, n, device):
    batch = {}
    for k, key in enumerate(('sketch', 'positive', 'negative')):
        for name, v in random_inputs(b, size, n, device, seed=k).items():
            batch[key if name == 'image' else f'{key}_{name}'] = v
    batch['photo_name'] = [f'p{i}' for i in range(b)]
    return batch


def train_check(a, device):
    print(f'training: proposed model, {a.batch_size} triplets of {a.image_size} px, {a.nodes} boxes, '
          f'D = {a.dim}, on {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else ''))
    print(f'{"backbone":<18} {"amp":<5} {"steps/s":>8} {"peak GPU GiB":>12} {"host reads/step":>15} '
          f'{"eval encode+dist s":>18}')
    for backbone in a.backbones:
        for amp in a.amps:
            problem = runtime.check_amp(amp, device)
            if problem:
                print(f'{backbone:<18} {amp:<5} skipped: {problem}')
                continue
            args = options.parse_args('main', ['--backbone', backbone, '--pretrained', 'none', '--dim', str(a.dim),
                                               '--image_size', str(a.image_size), '--amp', amp,
                                               '--batch_size', str(a.batch_size)])
            torch.manual_seed(0)
            model = build_model(args).to(device).train()
            optimizer = train.make_optimizer(model, args)
            scaler = torch.amp.GradScaler(device.type) if amp == 'fp16' else None
            loss_fn = TripletLoss.from_options(args)
            batch = random_batch(a.batch_size, a.image_size, a.nodes, device)

            def step():
                return train.train_step(model, loss_fn, batch, optimizer, device, args.aux_weight, amp, scaler)
            step()                                              # warm-up (cuDNN, allocator)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            with runtime.HostReads(cuda_only=device.type == 'cuda') as reads:
                real_step = optimizer.step
                optimizer.step = lambda *x, **k: _paused(reads, real_step, *x, **k)
                loss = step()
                del optimizer.step
            sync(device)
            start = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            sync(device)
            rate = a.steps / (time.perf_counter() - start)
            peak = f'{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f}' if device.type == 'cuda' else '-'
            model.eval()
            start = time.perf_counter()
            with torch.no_grad(), runtime.autocast(device, amp):
                s, p = model.encode([('sketch', random_inputs(a.batch_size, a.image_size, a.nodes, device, 7)),
                                     ('photo', random_inputs(a.batch_size, a.image_size, a.nodes, device, 8))])
                d = model.distance_matrix(s, p)
            sync(device)
            seconds = time.perf_counter() - start
            ok = loss == loss and abs(loss) != float('inf') and bool(torch.isfinite(d).all())
            print(f'{backbone:<18} {amp:<5} {rate:8.2f} {peak:>12} {reads.reads:15d} {seconds:18.3f}'
                  + ('' if ok else '   NON-FINITE'))
            if not ok:
                raise SystemExit(f'error: {backbone} --amp {amp}: non-finite loss or distances')


def _paused(reads, fn, *args, **kwargs):
    """fn uncounted: Adam reads its step counts, host tensors on CUDA too (no synchronisation)."""
    with reads.pause():
        return fn(*args, **kwargs)


def matmul_flops(device, n, dtype=torch.float32, repeat=5):
    x = torch.randn(n, n, device=device, dtype=dtype)
    x @ x
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        x @ x
    sync(device)
    return repeat * 2 * n ** 3 / (time.perf_counter() - start)


def eval_check(a, device):
    args = options.parse_args('main', ['--backbone', 'resnet18_light', '--pretrained', 'none', '--dim', str(a.dim)])
    torch.manual_seed(0)
    model = build_model(args).to(device).eval()
    feats = []
    for k, (count, low) in enumerate(((a.queries, 2), (a.gallery, a.nodes))):
        g = torch.Generator().manual_seed(k)
        mask = torch.arange(a.nodes)[None] < torch.randint(low, a.nodes + 1, (count, 1), generator=g)
        nodes = torch.nn.functional.normalize(torch.randn(count, a.nodes, a.dim, generator=g), dim=-1) * mask[..., None]
        feats.append({'nodes': nodes.to(device), 'mask': mask.to(device)})
    s, p = feats
    with torch.no_grad():
        model.distance_matrix({k: v[:8] for k, v in s.items()}, p, a.pair_chunk)     # warm-up
        sync(device)
        start = time.perf_counter()
        d = model.distance_matrix(s, p, a.pair_chunk)
        sync(device)
        seconds = time.perf_counter() - start
        with FlopCounterMode(display=False) as flops:
            model.distance_matrix(s, p, a.pair_chunk)
    peak = matmul_flops(device, 4096 if device.type == 'cuda' else 1024)
    head_rate = flops.get_total_flops() / seconds
    assert torch.isfinite(d).all()
    print(f'evaluation: {a.queries} sketches x {a.gallery} photos ({a.queries * a.gallery} pairs), up to {a.nodes} '
          f'nodes a side, D = {a.dim}, pairwise head (paper) on {device}')
    print(f'  {seconds:.3f} s in all, {seconds / a.queries:.4f} s per query (the paper: '
          f'{PAPER_SECONDS_PER_QUERY} s per query)')
    print(f'  head {head_rate / 1e9:.1f} GFLOP/s ({flops.get_total_flops() / 1e9:.2f} GFLOP) against '
          f'{peak / 1e9:.0f} GFLOP/s of a float32 matmul: {100 * head_rate / peak:.2f} % of it')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('what', choices=('train', 'eval'))
    p.add_argument('--device', default='cuda')
    p.add_argument('--backbones', nargs='+', default=['vgg16', 'resnet18_light', 'mobilenet_v2', 'efficientnet_lite0'])
    p.add_argument('--amps', nargs='+', default=['none', 'bf16', 'fp16'])
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--nodes', type=int, default=16)
    p.add_argument('--dim', type=int, default=512)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--queries', type=int, default=323)
    p.add_argument('--gallery', type=int, default=100)
    p.add_argument('--pair_chunk', type=int, default=2048)
    a = p.parse_args(argv)
    device = runtime.resolve_device(a.device)
    runtime.tune_cuda(device)
    (train_check if a.what == 'train' else eval_check)(a, device)


if __name__ == '__main__':
    main()
