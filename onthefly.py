"""On-the-fly retrieval: rank the gallery after every stroke of a sketch being drawn (Bhunia et al.,
"Sketch Less for More: On-the-Fly Fine-Grained Sketch Based Image Retrieval", CVPR 2020).

    python evaluate.py --checkpoint runs/RUN/best.pth --onthefly [--out DIR]

Steps of a sketch:
  - vector sketches: its strokes in drawing order; step k is the first k strokes, drawn and given
    to the model exactly as a whole sketch is (one node per stroke);
  - raster sketches (no drawing order): its ink components (8-connected) in reading order (top to
    bottom in bands of 1/8 of the image height, left to right within a band); step k keeps the
    first k and erases the others, then the ink is grouped into nodes as for any raster sketch.
    Sketches with more than MAX_STEPS components are evaluated at MAX_STEPS evenly spaced steps.

Metrics, over the test sketches (rank as in retrieval.py: photos at distance <= the true one's):
  - acc@1 / acc@10 at 20, 40, 60, 80 and 100 % of the steps (step ceil(f * n) of n);
  - m@A: the mean over the steps of 1 / rank (the area under the 1/rank curve), then over sketches;
  - m@B: the mean over the steps of the ranking percentile (G - rank) / (G - 1) (1: first, 0: last).
The photo features are computed once; the sketch side is encoded in batches that mix the steps of
all sketches; with a first stage (rerank M) every step reranks its own top M.
"""
import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

import experiment
import retrieval
import sketch
from dataset import build_datasets
from files import open_image
from search import sketch_item

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
CURVE = tuple(round(0.05 * k, 2) for k in range(1, 21))     # the figure's x axis: 5 % ... 100 %
MAX_STEPS = 32          # raster sketches: at most this many steps (ink components can be many specks)
READING_BANDS = 8


# ----------------------------------------------------------------------------- steps of a sketch
def vector_steps(points):
    """Cleaned (L, 3) points -> the points of each stroke prefix, [(L_k, 3)] for k = 1..n strokes."""
    ends = np.flatnonzero(np.asarray(points)[:, 2] == 1) + 1
    ends = [int(e) for e in ends] + ([len(points)] if not len(ends) or ends[-1] != len(points) else [])
    return [points[:e] for e in ends]


def reading_order(labels, count, height):
    """Component ids 1..count of a label image in reading order (bands of height / READING_BANDS)."""
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    top = np.full(count + 1, np.iinfo(np.int64).max)
    left = np.full(count + 1, np.iinfo(np.int64).max)
    np.minimum.at(top, ids, ys)
    np.minimum.at(left, ids, xs)
    band = max(height / READING_BANDS, 1.0)
    return sorted(range(1, count + 1), key=lambda i: (int(top[i] // band), left[i], top[i]))


def raster_steps(img, max_steps=MAX_STEPS):
    """A raster sketch (PIL) -> [PIL image with the first k ink components in reading order] for
    the steps k (all of them, or max_steps evenly spaced ones ending at the whole sketch)."""
    ink = sketch.ink_intensity(img)
    mask = ink > sketch.INK_THRESHOLD
    if not mask.any():
        raise sketch.SketchError('no ink (blank sketch)')
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    order = reading_order(labels, count - 1, mask.shape[0])
    n = len(order)
    ks = range(1, n + 1) if n <= max_steps else sorted({math.ceil(n * j / max_steps) for j in range(1, max_steps + 1)})
    rank = np.zeros(count, np.int64)
    rank[order] = np.arange(1, n + 1)
    out = []
    for k in ks:
        dropped = (rank[labels] > k) & (labels > 0)
        part = ink.copy()
        # Dilated, as raster_nodes erases coarse detail, so the anti-aliased rim goes too.
        part[cv2.dilate(dropped.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = 0
        out.append(Image.fromarray(255 - part).convert('RGB'))
    return out


class StepSet(Dataset):
    """Every step of every test sketch as a query item (search.sketch_item), in order: sketch 0's
    steps, then sketch 1's, ... `.owner` long [P]: the sketch of each step; `.counts`: steps per
    sketch; `.kind`: how the steps were made, in words."""

    def __init__(self, test, image_size, which=None):
        """which: the indices of the test sketches to use (default all); `.targets`: their photos."""
        style = replace(test.config.style, detail='full')
        self.style, self.image_size, self.steps, owner = style, image_size, [], []
        which = range(len(test.records)) if which is None else which
        records, self.targets = [test.records[i] for i in which], [test.targets[i] for i in which]
        vector = [r.points is not None for r in records]
        for i, rec in enumerate(records):
            if rec.points is not None:
                parts = [('vector', p) for p in vector_steps(rec.points)]
            else:
                parts = [('raster', im) for im in raster_steps(open_image(rec.path))]
            self.steps += parts
            owner += [i] * len(parts)
        self.owner = torch.tensor(owner)
        self.counts = torch.bincount(self.owner, minlength=len(records))
        self.kind = ('vector sketches: prefixes of the strokes in drawing order' if all(vector) else
                     'raster sketches: ink components added in reading order' if not any(vector) else
                     'vector sketches by strokes in drawing order, raster ones by ink components in reading order')

    def __len__(self):
        return len(self.steps)

    def __getitem__(self, i):
        kind, part = self.steps[i]
        if kind == 'vector':
            img, boxes = self.style.vector(part)
            return sketch_item(img, boxes, part, 'full', self.image_size)
        img, boxes, _ = self.style.raster(part)
        return sketch_item(img, boxes, None, 'full', self.image_size)


# ----------------------------------------------------------------------------- metrics
def step_at(counts, fraction):
    """Index (0-based) of the step at `fraction` of each sketch's steps: ceil(f * n) - 1, >= 0."""
    return (torch.ceil(counts.double() * fraction - 1e-9).long() - 1).clamp(min=0)


def onthefly_metrics(ranks, owner, counts, gallery):
    """ranks long [P] of the steps (grouped by sketch, in order), owner long [P], counts long [Q],
    gallery size G -> {'acc@1@20': ..., 'm@A', 'm@B', 'curve': [[f, acc@1, acc@10], ...], ...}."""
    start = torch.cumsum(counts, 0) - counts
    r = ranks.double()
    recip = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, owner, 1 / r) / counts
    pct = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, owner, (gallery - r) / max(gallery - 1, 1))
    pct /= counts

    def acc(fraction, k):
        return (ranks[start + step_at(counts, fraction)] <= k).double().mean().item()
    out = {'m@A': recip.mean().item(), 'm@B': pct.mean().item(), 'queries': len(counts), 'steps': len(ranks),
           'gallery': gallery, 'curve': [[f, acc(f, 1), acc(f, 10)] for f in CURVE]}
    for f in FRACTIONS:
        out[f'acc@1@{round(100 * f)}'], out[f'acc@10@{round(100 * f)}'] = acc(f, 1), acc(f, 10)
    return out


@torch.no_grad()
def evaluate_onthefly(model, test, device, image_size, config=retrieval.EvalConfig(), progress=True, sketches=0):
    """Rank the gallery after every step of every test sketch (or of `sketches` of them, evenly
    spread over the split), as a retrieval.EvalConfig says. Returns (metrics, StepSet, ranks [P])."""
    was_training = model.training
    model.eval()
    which = retrieval.figure_queries(len(test.records), sketches) if sketches else None
    steps = StepSet(test, image_size, which)
    p, _ = retrieval.encode_set(model, test.gallery, 'photo', config.batch_size, device, config.workers, progress)
    s, _ = retrieval.encode_set(model, steps, 'sketch', config.batch_size, device, config.workers, progress)
    scores = retrieval.rank_scores(model, s, p, config.rerank, config.pair_chunk, progress).cpu()
    targets = torch.tensor(steps.targets)[steps.owner]
    _, ranks = retrieval.retrieval_metrics(scores, targets)
    model.train(was_training)
    metrics = onthefly_metrics(ranks, steps.owner, steps.counts, len(test.gallery))
    metrics['kind'] = steps.kind
    return metrics, steps, ranks


# ----------------------------------------------------------------------------- figure and table
COLOURS = [(0, 90, 200), (200, 60, 0), (0, 150, 60), (150, 0, 150), (120, 120, 0), (0, 140, 140), (90, 90, 90)]


def plot_curves(path, curves, title, panel=420, height=360, pad=48):
    """{label: [[fraction, acc@1, acc@10], ...]} -> a PNG of two panels, acc@1 and acc@10 (%) against
    the share of the sketch drawn, one colour per label (PIL only)."""
    legend = 18 * len(curves) + 8
    img = Image.new('RGB', (2 * panel, height + legend + 24), 'white')
    d = ImageDraw.Draw(img)
    d.text((pad, 6), title, fill='black')
    for col, name in ((1, 'acc@1 %'), (2, 'acc@10 %')):
        x0 = (col - 1) * panel

        def xy(f, v):
            return x0 + pad + f * (panel - 2 * pad), 24 + height - pad - v / 100 * (height - 2 * pad)
        for v in range(0, 101, 20):
            d.line([xy(0, v), xy(1, v)], fill=(230, 230, 230) if v else 'black')
            d.text((x0 + pad - 24, xy(0, v)[1] - 6), f'{v}', fill='black')
        for f in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
            d.text((xy(f, 0)[0] - 10, xy(0, 0)[1] + 6), f'{round(100 * f)}%', fill='black')
        d.line([xy(0, 0), xy(0, 100)], fill='black')
        d.text((x0 + pad, 24 + 4), name, fill='black')
        d.text((x0 + panel // 2 - 50, xy(0, 0)[1] + 22), 'share of strokes drawn', fill='black')
        for k, pts in enumerate(curves.values()):
            colour = COLOURS[k % len(COLOURS)]
            line = [xy(c[0], 100 * c[col]) for c in pts]
            d.line(line, fill=colour, width=2)
            for x, y in line:
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    for k, label in enumerate(curves):
        y = 24 + height + 4 + 18 * k
        d.line([(pad, y + 6), (pad + 20, y + 6)], fill=COLOURS[k % len(COLOURS)], width=3)
        d.text((pad + 26, y), label, fill=COLOURS[k % len(COLOURS)])
    img.save(path)


def summary_lines(m):
    """The metrics as printed lines: the table of acc@K at each share of the strokes, m@A, m@B."""
    head = '  '.join(f'{round(100 * f):>6d}%' for f in FRACTIONS)
    return [f'           {head}',
            '  acc@1    ' + '  '.join(f'{100 * m[f"acc@1@{round(100 * f)}"]:6.2f}%' for f in FRACTIONS),
            '  acc@10   ' + '  '.join(f'{100 * m[f"acc@10@{round(100 * f)}"]:6.2f}%' for f in FRACTIONS),
            f'  m@A (mean 1/rank over the drawing) {100 * m["m@A"]:.2f}   '
            f'm@B (mean ranking percentile) {100 * m["m@B"]:.2f}']


def write_results(folder, stem, metrics, label):
    """<folder>/onthefly_<stem>.json and .png; returns the PNG's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'onthefly_{stem}.json').write_text(json.dumps(metrics, indent=1))
    png = folder / f'onthefly_{stem}.png'
    plot_curves(png, {label: metrics['curve']}, f'on-the-fly retrieval: {label}')
    return png


def evaluate_checkpoint(model, args, state, path, device, out=None, sketches=0):
    """evaluate.py --onthefly: the test split of the checkpoint's dataset (or `sketches` of its
    sketches, evenly spread), printed, and written as onthefly_<checkpoint stem>[_n<sketches>].json
    / .png into `out` (default: the checkpoint's folder)."""
    _, test = build_datasets(experiment.data_config(args))
    metrics, _, _ = evaluate_onthefly(model, test, device, args.image_size, retrieval.EvalConfig.from_options(args),
                                      sketches=sketches)
    metrics.update(checkpoint=str(path), step=state.get('step'), rerank=args.rerank, method=args.method)
    how = f', rerank {args.rerank}' if args.rerank else ''
    some = f' of {len(test.records)}, evenly spread' if metrics['queries'] < len(test.records) else ''
    print(f'{args.dataset} on-the-fly ({metrics["queries"]}{some} sketches, {metrics["gallery"]} photos{how}; '
          f'{metrics["kind"]}; {metrics["steps"]} steps in all)')
    print('\n'.join(summary_lines(metrics)))
    stem = path.stem + (f'_n{metrics["queries"]}' if some else '')
    png = write_results(out or path.parent, stem, metrics, f'{args.method} ({path.parent.name}/{path.name})')
    print(f'on-the-fly figure: {png}')
    return metrics
