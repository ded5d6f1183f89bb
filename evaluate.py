"""Pairwise retrieval evaluation (SPEC section 7) and the retrieval figure.

    python evaluate.py --checkpoint runs/RUN/best.pth [--sketch_detail coarse] [--data_root DIR]

Region features of every query sketch and every gallery photo are computed once; then all
(query, photo) pairs go through the pairwise head in chunks of --pair_chunk pairs.
"""
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm import tqdm

import options
from dataset import DatasetError, build_datasets, collate
from model import PretrainedWeightsError, build_model


def resolve_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda, but torch sees no CUDA device')
    return torch.device(name)


@torch.no_grad()
def encode_all(encoder, dataset, key, batch_size, device, workers=0):
    """Region features of a whole split: nodes [M, N, D] and mask bool [M, N] on device, and
    the items' gallery targets long [M] (None for the gallery)."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers)
    feats, masks, targets = [], [], []
    for batch in tqdm(loader, desc=f'{key} features', leave=False, dynamic_ncols=True):
        mask = batch[f'{key}_mask'].to(device)
        feats.append(encoder(batch[key].to(device), batch[f'{key}_boxes'].to(device), mask))
        masks.append(mask)
        targets.append(batch.get('target'))
    width = max(m.shape[1] for m in masks)
    pad = torch.nn.functional.pad
    return (torch.cat([pad(f, (0, 0, 0, width - f.shape[1])) for f in feats]),
            torch.cat([pad(m, (0, width - m.shape[1])) for m in masks]),
            None if targets[0] is None else torch.cat(targets))


@torch.no_grad()
def pairwise_distances(head, s, s_mask, p, p_mask, chunk=2048):
    """Euclidean distance of the pair embeddings for every (query, photo) pair.
    s: [Q, Ns, D], s_mask: [Q, Ns]; p: [G, Np, D], p_mask: [G, Np]  ->  [Q, G]."""
    q, g = len(s), len(p)
    qi = torch.arange(q, device=s.device).repeat_interleave(g)
    gi = torch.arange(g, device=s.device).repeat(q)
    out = torch.empty(q * g, device=s.device)
    for start in tqdm(range(0, q * g, chunk), desc='pairs', leave=False, dynamic_ncols=True):
        a, b = qi[start:start + chunk], gi[start:start + chunk]
        se, pe = head(s[a], s_mask[a], p[b], p_mask[b])
        out[start:start + chunk] = (se - pe).norm(dim=1)
    return out.view(q, g)


def retrieval_metrics(dist, targets):
    """dist: [Q, G], targets: long [Q]. rank = photos at distance <= the true photo's (ties
    count against the query). Returns (metrics dict, ranks long [Q])."""
    true = dist.gather(1, targets[:, None])
    ranks = (dist <= true).sum(1)
    metrics = {'acc@1': (ranks <= 1).float().mean().item(),
               'acc@10': (ranks <= 10).float().mean().item(),
               'mean_rank': ranks.float().mean().item()}
    return metrics, ranks


@torch.no_grad()
def evaluate(model, test, args, device):
    """Runs the whole test split. Returns (metrics, dist [Q, G], targets [Q], ranks [Q]) on the CPU."""
    was_training = model.training
    model.eval()
    s, s_mask, targets = encode_all(model.sketch_encoder, test.queries, 'sketch',
                                    args.eval_batch_size, device, args.workers)
    p, p_mask, _ = encode_all(model.photo_encoder, test.gallery, 'photo',
                              args.eval_batch_size, device, args.workers)
    dist = pairwise_distances(model.head, s, s_mask, p, p_mask, args.pair_chunk).cpu()
    metrics, ranks = retrieval_metrics(dist, targets)
    model.train(was_training)
    return metrics, dist, targets, ranks


def retrieval_figure(test, dist, targets, ranks, queries, top=5, tile=128):
    """A grid like the paper's: each row a query sketch then its top-`top` photos; the true
    photo outlined in green, its rank written under the sketch (and the true photo appended
    when it is not in the top)."""
    pad, text_h = 6, 16
    rows = []
    for q in queries:
        order = dist[q].argsort(stable=True).tolist()
        target = int(targets[q])
        shown = order[:top] + ([target] if target not in order[:top] else [])
        row = Image.new('RGB', ((len(shown) + 1) * (tile + pad) + pad, tile + text_h + 2 * pad), 'white')
        draw = ImageDraw.Draw(row)
        row.paste(test.query_image(q).convert('RGB').resize((tile, tile)), (pad, pad))
        draw.text((pad, tile + pad + 2), f'true photo: rank {int(ranks[q])}', fill='black')
        for k, g in enumerate(shown):
            x = (k + 1) * (tile + pad) + pad
            row.paste(test.gallery_image(g).convert('RGB').resize((tile, tile)), (x, pad))
            if g == target:
                draw.rectangle([x - 3, pad - 3, x + tile + 2, pad + tile + 2], outline=(0, 170, 0), width=4)
            label = f'#{k + 1}' if k < top else f'true #{int(ranks[q])}'
            draw.text((x, tile + pad + 2), f'{label}  d={dist[q, g]:.2f}', fill='black')
        rows.append(row)
    grid = Image.new('RGB', (max(r.width for r in rows), sum(r.height for r in rows)), 'white')
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


def figure_queries(n_queries, n):
    """Evenly spaced query indices, so figures of the same run show the same queries."""
    n = min(n, n_queries)
    return [round(i * (n_queries - 1) / max(n - 1, 1)) for i in range(n)]


def load_checkpoint_model(path, overrides, device):
    """The model and its options from a checkpoint alone; `overrides` (explicit CLI options)
    replace the stored data/evaluation options."""
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    stored = dict(ckpt['args'])
    stored.update(overrides)
    stored['pretrained'] = 'none'       # weights come from the checkpoint, not from ImageNet
    args = options.resolve(options.build_parser().parse_args([]))
    vars(args).update(stored)
    model = build_model(args)
    model.load_state_dict(ckpt['model'])
    return model.to(device), args, ckpt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    explicit = options.explicit_args(argv)
    if 'checkpoint' not in explicit:
        raise SystemExit('error: evaluate.py needs --checkpoint RUN/best.pth')
    ckpt_path = Path(explicit.pop('checkpoint'))
    if not ckpt_path.is_file():
        raise SystemExit(f'error: --checkpoint {ckpt_path}: no such file')
    device = resolve_device(explicit.get('device', 'auto'))
    try:
        model, args, ckpt = load_checkpoint_model(ckpt_path, explicit, device)
        _, test = build_datasets(args)
    except (DatasetError, PretrainedWeightsError) as e:
        raise SystemExit(f'error: {e}')
    metrics, dist, targets, ranks = evaluate(model, test, args, device)
    metrics.update(queries=len(test.queries), gallery=len(test.gallery),
                   sketch_detail=args.sketch_detail, checkpoint=str(ckpt_path), step=ckpt.get('step'))
    suffix = '' if args.sketch_detail == 'full' else f'_{args.sketch_detail}'
    fig_path = ckpt_path.with_name(f'retrieval_{ckpt_path.stem}{suffix}.png')
    retrieval_figure(test, dist, targets, ranks, figure_queries(len(test.queries), args.figure_queries)).save(fig_path)
    print(f'{args.dataset} test ({len(test.queries)} sketches, {len(test.gallery)} photos, '
          f'sketch detail {args.sketch_detail}): acc@1 {100 * metrics["acc@1"]:.2f}%  '
          f'acc@10 {100 * metrics["acc@10"]:.2f}%  mean rank {metrics["mean_rank"]:.2f}')
    print(f'retrieval figure: {fig_path}')
    with open(ckpt_path.with_name(f'eval_{ckpt_path.stem}{suffix}.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    return metrics


if __name__ == '__main__':
    main()
