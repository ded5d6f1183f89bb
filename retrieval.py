"""Retrieval with any model: encode a split once, rank the gallery for every query (the pairwise
head on every pair, or two-stage), the paper's metrics, and the retrieval figure.

Ranking (arXiv 2007.15103; docs/method.md, section 1): rank = the number of gallery photos whose distance is <= the
true photo's (ties count against the query); acc@K = share of queries with rank <= K. A
non-finite distance ranks last: a diverged model scores 0, never 100 %.

Two-stage (`rerank` M > 0): the whole gallery is ordered by the model's pair-independent
first-stage embedding (`model.first_stage`), and only each query's top M go through the pairwise
head; the others keep their first-stage order behind them. M >= the gallery size gives the full
pairwise ranking.
"""
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import runtime
from dataset import collate
from model import batch_inputs, concat, select


@dataclass(frozen=True)
class EvalConfig:
    """How a test split is evaluated (the evaluation options): images per batch when encoding,
    DataLoader workers, pairs per call of the pairwise head, and the two-stage M (0 = the head on
    every pair)."""
    batch_size: int = 32
    workers: int = 0
    pair_chunk: int = 2048
    rerank: int = 0

    @classmethod
    def from_options(cls, args):
        return cls(args.eval_batch_size, args.workers, args.pair_chunk, args.rerank)


@torch.no_grad()
def encode_set(model, dataset, key, batch_size, device, workers=0, progress=True):
    """Features of a whole dataset ('sketch' queries or 'photo' gallery): one features dict
    (rows in dataset order, node widths padded) and the items' targets long [M] (or None)."""
    # Its own generator: a loader seeds its iterator from the global one otherwise, and evaluating
    # would then change the Gumbel noise of the training steps after it.
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                        pin_memory=torch.device(device).type == 'cuda', generator=torch.Generator().manual_seed(0))
    feats, targets = [], []
    for batch in tqdm(loader, desc=f'{key} features', leave=False, dynamic_ncols=True, disable=not progress):
        feats.append(model.encode([('sketch' if key == 'sketch' else 'photo', batch_inputs(batch, key, device))])[0])
        targets.append(batch.get('target'))
    return concat(feats), (None if targets[0] is None else torch.cat(targets))


@torch.no_grad()
def diagnose(model, test, device, batch_size=32, queries=64):
    """model.diagnostics on the first `queries` test sketches, each with its true photo (evenly
    spread over the split, so that every evaluation of a run looks at the same pairs)."""
    was_training = model.training
    model.eval()
    idx = figure_queries(len(test.queries), queries)
    s, targets = encode_set(model, Subset(test.queries, idx), 'sketch', batch_size, device, progress=False)
    photos = sorted(set(targets.tolist()))
    p, _ = encode_set(model, Subset(test.gallery, photos), 'photo', batch_size, device, progress=False)
    row = {g: k for k, g in enumerate(photos)}
    out = model.diagnostics(s, select(p, torch.tensor([row[int(t)] for t in targets], device=device)))
    model.train(was_training)
    return out


def first_stage_order(model, s, p):
    """Gallery indices of each query ordered by first-stage distance, long [Q, G], or None when
    the model has no first stage."""
    e_s, e_p = model.first_stage(s), model.first_stage(p)
    if e_s is None:
        return None
    d = torch.cdist(e_s.float(), e_p.float())
    return d.argsort(dim=1, stable=True)


def reranks(model, rerank):
    """Whether --rerank M applies: a pairwise model with a first stage (--first_stage_dim)."""
    return bool(rerank) and model.pairwise and model.has_first_stage


@torch.no_grad()
def rank_scores(model, s, p, rerank=0, chunk=2048, progress=False):
    """[Q, G] scores whose order is the model's ranking: distances of the pairs the head scored;
    with rerank M, the first stage's order offset behind the head's top M."""
    order = first_stage_order(model, s, p) if reranks(model, rerank) else None
    if order is None:
        return model.distance_matrix(s, p, chunk, progress=progress)
    q, g = order.shape
    top = order[:, :min(rerank, g)]
    d = model.distance_matrix(s, p, chunk, cols=top, progress=progress)
    finite = d[torch.isfinite(d)]
    offset = (finite.max().item() if len(finite) else 0.0) + 1.0
    position = torch.empty_like(order).scatter_(1, order, torch.arange(g, device=order.device).expand(q, g))
    scores = offset + position.to(d.dtype)
    return scores.scatter_(1, top, d)


def retrieval_metrics(dist, targets):
    """dist: [Q, G], targets: long [Q]. rank = photos at distance <= the true photo's (ties
    count against the query; NaN and inf rank last). Returns (metrics dict, ranks long [Q])."""
    dist = torch.nan_to_num(dist.double(), nan=float('inf'), posinf=float('inf'))
    true = dist.gather(1, targets[:, None])
    ranks = (dist <= true).sum(1)
    metrics = {'acc@1': (ranks <= 1).double().mean().item(),
               'acc@10': (ranks <= 10).double().mean().item(),
               'mean_rank': ranks.double().mean().item(),
               'nonfinite': int((~torch.isfinite(dist)).sum())}
    return metrics, ranks


def shard(n):
    """This process's contiguous share of n items under torch.distributed (all of them alone)."""
    rank, size = runtime.world()
    return range(rank * n // size, (rank + 1) * n // size)


@torch.no_grad()
def evaluate(model, test, device, config=EvalConfig(), progress=True):
    """The whole test split, as an EvalConfig says. Under torch.distributed each process ranks its
    share of the queries against the whole gallery and the rows are gathered, so every query
    counts once. Returns (metrics, scores [Q, G], targets [Q], ranks [Q]) on the CPU."""
    was_training = model.training
    model.eval()
    mine = list(shard(len(test.queries)))
    p, _ = encode_set(model, test.gallery, 'photo', config.batch_size, device, config.workers, progress)
    if mine:
        s, targets = encode_set(model, Subset(test.queries, mine), 'sketch', config.batch_size, device,
                                config.workers, progress)
        scores = rank_scores(model, s, p, config.rerank, config.pair_chunk, progress)
    else:       # fewer queries than processes: this one has none, but still joins the gathers
        scores = torch.empty(0, len(test.gallery), device=device)
        targets = torch.empty(0, dtype=torch.long, device=device)
    scores = runtime.all_gather_cat(scores.float()).cpu()
    targets = runtime.all_gather_cat(targets.to(device)).cpu()
    metrics, ranks = retrieval_metrics(scores, targets)
    model.train(was_training)
    return metrics, scores, targets, ranks


# ----------------------------------------------------------------------------- figures
def retrieval_row(query, photos, labels, green, tile=128, caption=''):
    """One row of a retrieval figure: the query then photos (PIL), labels under each, the photos
    whose positions are in `green` outlined."""
    pad, text_h = 6, 16
    width = (len(photos) + 1) * (tile + pad) + pad
    # A caption wider than the sketch's tile gets a line of its own instead of overprinting the labels.
    long = ImageDraw.Draw(Image.new('RGB', (1, 1))).textlength(caption) > tile
    row = Image.new('RGB', (width, tile + text_h * (1 + long) + 2 * pad), 'white')
    draw = ImageDraw.Draw(row)
    row.paste(query.convert('RGB').resize((tile, tile)), (pad, pad))
    draw.text((pad, tile + pad + 2 + text_h * long), caption, fill='black')
    for k, (photo, label) in enumerate(zip(photos, labels)):
        x = (k + 1) * (tile + pad) + pad
        row.paste(photo.convert('RGB').resize((tile, tile)), (x, pad))
        if k in green:
            draw.rectangle([x - 3, pad - 3, x + tile + 2, pad + tile + 2], outline=(0, 170, 0), width=4)
        draw.text((x, tile + pad + 2), label, fill='black')
    return row


def stack_rows(rows):
    grid = Image.new('RGB', (max(r.width for r in rows), sum(r.height for r in rows)), 'white')
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid


def retrieval_figure(test, dist, targets, ranks, queries, top=5, tile=128):
    """A grid like the paper's: each row a query sketch then its top-`top` photos; the true
    photo outlined in green, its rank written under the sketch (and the true photo appended
    when it is not in the top)."""
    rows = []
    for q in queries:
        order = dist[q].argsort(stable=True).tolist()
        target = int(targets[q])
        shown = order[:top] + ([target] if target not in order[:top] else [])
        labels = [(f'#{k + 1}' if k < top else f'true #{int(ranks[q])}') + f'  d={dist[q, g]:.2f}'
                  for k, g in enumerate(shown)]
        rows.append(retrieval_row(test.query_image(q), [test.gallery_image(g) for g in shown], labels,
                                  {shown.index(target)}, tile, f'true photo: rank {int(ranks[q])}'))
    return stack_rows(rows)


def figure_queries(n_queries, n):
    """Evenly spaced query indices, so figures of the same run show the same queries."""
    n = min(n, n_queries)
    return [round(i * (n_queries - 1) / max(n - 1, 1)) for i in range(n)]
