"""The paper's tables from one command each, our figures beside the paper's.

    python tables.py table1 --dataset ChairV2 --data_root DATA [training options for every row]
    python tables.py table2 --dataset ChairV2 --data_root DATA ...
    python tables.py kregions --dataset ChairV2 --data_root DATA ...
    python tables.py coarse_figure --dataset ChairV2 --data_root DATA ...
    python tables.py onthefly --dataset ChairV2 --data_root DATA ...   # retrieval after every stroke, several methods

Every row is a main.py run with the options typed here (budget, backbone, pretrained, seed, ...)
plus the row's own (method, flags, k), applied equally to every row. Runs live in
--out/runs/<row>-<hash of the options>: a finished run is reused, an interrupted one resumed, so
re-running a table command only trains what is missing. Each table is written as Markdown
(<table>.md, the paper's shape, the paper's numbers beside ours) and JSON (<table>.json) into --out.
Reported figures are the last evaluation of each run (not the best one: no choice on the test set).
A stored record (done.json, metrics.jsonl) is used only when it holds finite fractions in range
(`metrics_problem`); an unreadable done.json is taken as an unfinished run, which is run again.
"""
import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

import onthefly as otf
import options
import retrieval
import runtime
from backbones import BACKBONES, PretrainedWeightsError
from checkpoint import CheckpointError
from experiment import load_model, load_test
from feature_cache import FeatureCacheError
from files import DatasetError, WriteError
from main import main as train_run
from methods import METHODS

# The paper's numbers (arXiv 2007.15103, Tables 1-3 and the k-regions study).
PAPER_TABLE1 = {   # acc@1 / acc@10 (%): ChairV2, ShoeV2, SWIRE
    'Triplet-SN': ((45.65, 84.24), (28.71, 71.56), None),
    'Triplet-Attn-SN': ((56.54, 88.15), (31.74, 74.78), None),
    'SWIRE': (None, None, (15.90, 60.90)),
    'B-Siamese': ((49.54, 85.98), (30.96, 72.54), (54.21, 82.15)),
    'B-Gated-Siamese': ((53.08, 86.34), (32.65, 74.24), (62.12, 85.65)),
    'B-Localised-Coattn': ((55.24, 88.21), (33.21, 77.83), (65.48, 88.65)),
    'B-Graph-Hierarchy': ((58.22, 89.97), (34.05, 79.54), (66.18, 89.32)),
    'SketchBERT-Variant': ((13.54, 54.78), (8.15, 48.23), None),
    'SketchFormer-Variant': ((32.54, 84.82), (26.21, 65.34), None),
    'Proposed': ((62.45, 90.71), (36.27, 80.65), (67.23, 90.11)),
}
PAPER_TABLE2 = {   # acc@1 (%): ChairV2, ShoeV2, SWIRE
    'Explicit Hierarchy': (None, None, 71.54), 'w/o Localised-Coattn': (51.85, 31.82, 60.32),
    'w/o Hierarchy': (55.24, 33.21, 65.48), 'Sketch-coarse': (47.64, 31.83, 51.26),
    'Sketch-coarse++': (42.33, 24.11, 45.33), 'Proposed': (62.45, 36.27, 67.23),
}
PAPER_TABLE3 = {   # acc@10 (%), ChairV2 / ShoeV2: B-Siamese, Proposed
    'full': ((85.98, 72.54), (90.71, 80.65)), 'coarse': ((75.32, 62.68), (87.58, 77.23)),
    'coarse++': ((65.31, 54.32), (85.64, 75.91)),
}
PAPER_KREGIONS = {8: (58.37, 0.16), 12: (60.92, 0.36), 16: (62.45, 0.67), 20: (62.46, 1.06)}   # ChairV2, GPU
COLUMN = {'ChairV2': 0, 'ShoeV2': 1, 'SWIRE': 2}
VECTOR_ONLY = {'sketchbert', 'sketchformer', 'triplet_sn', 'triplet_attn_sn'}   # QMUL rows of the paper
TABLE1 = ['triplet_sn', 'triplet_attn_sn', 'swire', 'siamese', 'gated_siamese', 'localised_coattn',
          'graph_hierarchy', 'sketchbert', 'sketchformer', 'hierarchy', 'hierarchy_plus']
PROPOSED = ('hierarchy', 'hierarchy_plus')     # what --proposed can name (Table 2, k regions, coarse figure)


# ----------------------------------------------------------------------------- runs
class Runs:
    """main.py runs of one table command: `base` argv (what the user typed) plus each row's own."""

    def __init__(self, base, out, folder=None):
        """Runs live in `folder` (default: <out>/runs)."""
        self.base, self.folder = list(base), Path(folder) if folder else Path(out) / 'runs'

    def path(self, name, row):
        """<name>-<hash of the options>; a run of the same options under another name (e.g. a
        Table 1 row that an ablation also trains) is the same run, reused."""
        digest = hashlib.sha1(json.dumps(self.base + row).encode()).hexdigest()[:10]
        same = sorted(self.folder.glob(f'*-{digest}')) if self.folder.is_dir() else []
        return same[0] if same else self.folder / f'{name}-{digest}'

    def train(self, name, row):
        """The run's final metrics and folder: reused when finished, resumed when interrupted."""
        run = self.path(name, row)
        done = run / 'done.json'
        if done.is_file():
            try:
                metrics = json.loads(done.read_text())
                problem = metrics_problem(metrics)
            except (OSError, ValueError, RecursionError) as e:
                problem = f'not readable JSON ({type(e).__name__})'
            if problem is None:
                return metrics, run
            print(f'note: {done}: {problem}; running the row again')
        if (run / 'last.pth').is_file():
            metrics = train_run(['--resume', str(run)])
        else:
            metrics = train_run([*self.base, *row, '--output_dir', str(self.folder), '--run_name', run.name])
        done.write_text(json.dumps(metrics, indent=1))
        return metrics, run


def metrics_problem(m):
    """Why a stored metrics record cannot be a table row (None if it can): acc@1 and acc@10 finite
    fractions with acc@1 <= acc@10, a finite mean rank >= 1."""
    if not isinstance(m, dict):
        return f'a {type(m).__name__}, not a record of metrics'
    for key in ('acc@1', 'acc@10', 'mean_rank'):
        v = m.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f'{key} is {v!r}, not a finite number'
    if not 0 <= m['acc@1'] <= m['acc@10'] <= 1:
        return f"acc@1 {m['acc@1']!r} and acc@10 {m['acc@10']!r} are not fractions with acc@1 <= acc@10"
    if m['mean_rank'] < 1:
        return f"mean_rank {m['mean_rank']!r} is below 1"
    return None


def row_extra(base, method):
    """Options a row adds to the table's. A row with a backbone of its own (the Sketch-a-Net rows)
    keeps it, with that backbone's weights and layer, whatever --backbone the table gives the
    others; one that trains from scratch trains it whole even when the table freezes the others'."""
    own = METHODS[method].defaults.get('backbone')
    if own is None:
        return []
    b = BACKBONES[own]
    extra = ['--backbone', own, '--pretrained', b.defaults['pretrained'], '--feature_layer', b.default_layer]
    if b.defaults['pretrained'] == 'none':
        extra += ['--freeze_backbone', '0', '--feature_cache', '']
    return extra


def proposed_options(method):
    """The head options of a proposed row written out, for its ablations (e.g. its
    'w/o Localised-Coattn' is --method no_coattn with them)."""
    out = []
    for key, value in METHODS[method].defaults.items():
        if isinstance(value, bool):
            out += [f'--{key}'] if value else [f'--no-{key}']
        else:
            out += [f'--{key}', str(value)]
    return out


def applicable(method, dataset):
    """Whether a Table 1 row exists for this dataset (the paper's '-' cells)."""
    swire = dataset in ('SWIRE', 'SyntheticGUI')
    if method == 'swire':
        return swire
    return not (swire and method in VECTOR_ONLY)


def suffix(method):
    """File and run-name suffix of a --proposed model ('' for the paper's)."""
    return '' if method == 'hierarchy' else f'_{method}'


def pct(x):
    return '-' if x is None else f'{100 * x:.2f}'


def paper_cell(values, dataset, k=None):
    col = COLUMN.get(dataset)
    v = None if col is None or values is None else values[col]
    if v is None:
        return '-'
    return f'{v[0]:.2f} / {v[1]:.2f}' if k is None else f'{v:.2f}'


def write(out, name, title, header, rows, data, notes=()):
    """<out>/<name>.md (a Markdown table) and <out>/<name>.json."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f'# {title}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    lines += ['', *notes]
    (out / f'{name}.md').write_text('\n'.join(lines) + '\n')
    (out / f'{name}.json').write_text(json.dumps(data, indent=1))
    print('\n'.join(lines))


# ----------------------------------------------------------------------------- tables
def table1(a, base, runs):
    rows, data = [], {}
    for method in a.methods or TABLE1:
        label = METHODS[method].label
        if not applicable(method, a.dataset):
            continue
        m, run = runs.train(method, ['--method', method, *row_extra(base, method)])
        data[label] = dict(m, run=str(run))
        rows.append([label, f'{pct(m["acc@1"])} / {pct(m["acc@10"])}', f'{m["mean_rank"]:.1f}',
                     paper_cell(PAPER_TABLE1.get(label), a.dataset)])
    write(Path(a.out), 'table1', f'Table 1 on {a.dataset}: acc@1 / acc@10 (%)',
          ['method', 'ours', 'mean rank', f'paper ({a.dataset})'], rows, data, notes(a, base))


def evaluate_at(run, detail, device, rerank=None):
    """Metrics of a run's last.pth at a sketch detail level (and the scores, for figures)."""
    overrides = {'sketch_detail': detail}
    if rerank is not None:
        overrides['rerank'] = rerank
    model, args, test, _, _ = load_test(run / 'last.pth', overrides, device)
    metrics, scores, targets, ranks = retrieval.evaluate(model, test, device, retrieval.EvalConfig.from_options(args),
                                                         progress=False)
    return metrics, scores, targets, ranks, test


def table2(a, base, runs):
    """Table 2 (and the coarse-sketch Table 3) for the --proposed model: its ablations are the
    same model without co-attention, and B-Localised-Coattn (w/o Hierarchy)."""
    device = runtime.resolve_device('auto')
    rows, data = [], {}
    p = a.proposed
    proposed, proposed_run = runs.train(p, ['--method', p])
    siamese, siamese_run = runs.train('siamese', ['--method', 'siamese'])
    entries = []
    if a.dataset in ('SWIRE', 'SyntheticGUI'):
        explicit = runs.train(f'explicit{suffix(p)}', ['--method', p, '--hierarchy', 'explicit'])[0]
        entries.append(('Explicit Hierarchy', explicit))
    no_coattn = runs.train(f'no_coattn{suffix(p)}', ['--method', 'no_coattn', *proposed_options(p)])[0]
    entries += [('w/o Localised-Coattn', no_coattn),
                ('w/o Hierarchy', runs.train('localised_coattn', ['--method', 'localised_coattn'])[0])]
    coarse = {'full': (siamese, proposed)}
    for detail in ('coarse', 'coarse++'):
        coarse[detail] = tuple(evaluate_at(r, detail, device)[0] for r in (siamese_run, proposed_run))
        entries.append((f'Sketch-{detail}', coarse[detail][1]))
    entries.append(('Proposed', proposed))
    for label, m in entries:
        data[label] = m
        rows.append([label, pct(m['acc@1']), paper_cell(PAPER_TABLE2.get(label), a.dataset, k=1)])
    write(Path(a.out), f'table2{suffix(p)}', f'Table 2 on {a.dataset}: acc@1 (%), Proposed = --method {p}',
          ['row', 'ours', f'paper ({a.dataset})'], rows, data, notes(a, base))
    col = {'ChairV2': 0, 'ShoeV2': 1}.get(a.dataset)
    def paper3(d, i):
        return '-' if col is None else f'{PAPER_TABLE3[d][i][col]:.2f}'
    rows3 = [[d, pct(s['acc@10']), pct(p['acc@10']), paper3(d, 0), paper3(d, 1)] for d, (s, p) in coarse.items()]
    write(Path(a.out), f'table3{suffix(p)}', f'Coarse sketches on {a.dataset}: acc@10 (%), Proposed = --method {p}',
          ['sketch', 'B-Siamese (ours)', 'Proposed (ours)', 'B-Siamese (paper)', 'Proposed (paper)'], rows3,
          {d: {'siamese': s, 'proposed': p} for d, (s, p) in coarse.items()}, notes(a, base))


def kregions(a, base, runs):
    """acc@1 and measured seconds per query (the pairwise head over the whole gallery) at k photo
    regions; trained at each k (--kregions_eval_only: one k = 16 model evaluated at each k)."""
    device = runtime.resolve_device('auto')
    rows, data = [], {}
    p = a.proposed
    trained = None if not a.kregions_eval_only else runs.train(p, ['--method', p])[1]
    for k in (8, 12, 16, 20):
        run = trained or runs.train(f'{p}_k{k}', ['--method', p, '--num_regions', str(k)])[1]
        model, args, test, _, _ = load_test(run / 'last.pth', {'num_regions': k, 'rerank': 0}, device)
        start = time.perf_counter()
        m, *_ = retrieval.evaluate(model, test, device, retrieval.EvalConfig.from_options(args), progress=False)
        per_query = (time.perf_counter() - start) / len(test.queries)
        data[k] = dict(m, seconds_per_query=per_query, gallery=len(test.gallery))
        paper = [f'{v:.2f}' for v in PAPER_KREGIONS[k]] if a.dataset == 'ChairV2' else ['-', '-']
        rows.append([k, pct(m['acc@1']), f'{per_query:.3f}', *paper])
    write(Path(a.out), f'kregions{suffix(p)}', f'Photo regions k on {a.dataset}: acc@1 (%) and seconds per query '
                                             f'(--method {p})',
          ['k', 'acc@1 (ours)', 's / query (ours, this machine)', 'acc@1 (paper)', 's / query (paper, GPU)'],
          rows, data, notes(a, base) + [f'Seconds per query: the whole test evaluation (features and the pairwise '
                                        f'head on every pair) divided by the queries, on {device}.'])
    plot_kregions(Path(a.out) / f'kregions{suffix(p)}.png', data, a.dataset)


def plot_kregions(path, data, dataset):
    """A small PNG: acc@1 and seconds per query against k (PIL, no plotting dependency)."""
    from PIL import Image, ImageDraw
    W, H, pad = 520, 300, 50
    img = Image.new('RGB', (W, H), 'white')
    d = ImageDraw.Draw(img)
    ks = sorted(data)
    acc = [100 * data[k]['acc@1'] for k in ks]
    sec = [data[k]['seconds_per_query'] for k in ks]

    def xy(i, v, lo, hi):
        return pad + i * (W - 2 * pad) / (len(ks) - 1), H - pad - (v - lo) / max(hi - lo, 1e-9) * (H - 2 * pad)
    for series, colour, lo, hi in ((acc, (0, 90, 200), 0, 100), (sec, (200, 60, 0), 0, max(sec) * 1.2)):
        pts = [xy(i, v, lo, hi) for i, v in enumerate(series)]
        d.line(pts, fill=colour, width=3)
        for (x, y), v in zip(pts, series):
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            d.text((x + 6, y - 14), f'{v:.2f}' if v < 10 else f'{v:.1f}', fill=colour)
    for i, k in enumerate(ks):
        d.text((xy(i, 0, 0, 1)[0] - 6, H - pad + 8), f'k={k}', fill='black')
    d.text((pad, 10), f'{dataset}: acc@1 % (blue, 0-100) and s / query (orange)', fill='black')
    img.save(path)


def coarse_figure(a, base, runs):
    """The paper's coarse-sketch figure: for a few test sketches, rows at full, coarse and
    coarse++ detail; the true photo's rank under B-Siamese beside the proposed model's, with
    each model's top photos -> Images/coarse_<dataset>.png."""
    device = runtime.resolve_device('auto')
    runs_of = {'B-Siamese': runs.train('siamese', ['--method', 'siamese'])[1],
               'Proposed': runs.train(a.proposed, ['--method', a.proposed])[1]}
    rows = []
    results = {(name, d): evaluate_at(run, d, device) for name, run in runs_of.items()
               for d in ('full', 'coarse', 'coarse++')}
    test_full = results[('Proposed', 'full')][4]
    for q in retrieval.figure_queries(len(test_full.queries), a.figure_sketches):
        for d in ('full', 'coarse', 'coarse++'):
            for name in runs_of:
                _, scores, targets, ranks, test = results[(name, d)]
                order = scores[q].argsort(stable=True).tolist()[:4]
                target = int(targets[q])
                rows.append(retrieval.retrieval_row(
                    test.query_image(q), [test.gallery_image(g) for g in order], [f'#{i + 1}' for i in range(4)],
                    {order.index(target)} if target in order else set(), tile=96,
                    caption=f'{d}, {name}: true #{int(ranks[q])}'))
    path = Path(a.figure or f'Images/coarse_{a.dataset}.png')
    path.parent.mkdir(parents=True, exist_ok=True)
    retrieval.stack_rows(rows).save(path)
    print(f'coarse-sketch figure: {path}')


# The fixes of docs/method.md, section 9 (what the proposed model needs beyond the paper's
# method): name -> (its options, its short name in a combination's label).
FIXES = {
    'node_relu': (['--node_act', 'relu'], 'node relu'),
    'merge_act_none': (['--merge_act', 'none'], 'no merge ReLU'),
    'weighted': (['--merge', 'weighted'], 'weighted'),
    'maxres': (['--merge', 'maxres'], 'maxres'),
    'root_pool': (['--readout', 'root+pool'], 'root+pool'),
    'level_loss': (['--level_loss'], 'level_loss'),
    'scaled': (['--selection', 'scaled'], 'scaled'),
    'balanced': (['--selection', 'balanced'], 'balanced'),
    'round_norm': (['--round_norm', 'l2'], 'round_norm'),
    'level_merges': (['--level_merges', 'all'], 'level_merges all'),
}
COMBINATIONS = {
    'maxres_pool': ('maxres', 'root_pool'),
    'maxres_pool_all': ('maxres', 'root_pool', 'level_merges'),
    'maxres_pool_balanced_all': ('maxres', 'root_pool', 'balanced', 'level_merges'),
    'maxres_pool_norm': ('maxres', 'root_pool', 'round_norm'),
    'maxres_pool_level': ('maxres', 'root_pool', 'level_loss'),
    'all_pool': ('level_merges', 'root_pool'),
    'all_pool_level': ('level_merges', 'root_pool', 'level_loss'),
    'all_pool_balanced': ('level_merges', 'root_pool', 'balanced'),
    'all_pool_scaled': ('level_merges', 'root_pool', 'scaled'),
    'all_pool_relu': ('level_merges', 'root_pool', 'node_relu'),
    'maxres_pool_all_norm': ('maxres', 'root_pool', 'level_merges', 'round_norm'),
    'maxres_pool_all_scaled': ('maxres', 'root_pool', 'level_merges', 'scaled'),
    'maxres_all': ('maxres', 'level_merges'),
    'weighted_relu_pool': ('node_relu', 'weighted', 'root_pool'),
    'weighted_relu_pool_all': ('node_relu', 'weighted', 'root_pool', 'level_merges'),
}
# `ablation --rows` picks rows by name: the baselines, the paper's model, hierarchy_plus, each fix
# alone on the paper's model and the combinations. A row: (name, label, options).
HIERARCHY = ['--method', 'hierarchy']
ABLATION = [
    ('siamese', 'B-Siamese', ['--method', 'siamese']),
    ('localised_coattn', 'B-Localised-Coattn', ['--method', 'localised_coattn']),
    ('paper', 'Proposed (the paper\'s method)', HIERARCHY),
    ('plus', 'Proposed+ (--method hierarchy_plus)', ['--method', 'hierarchy_plus']),
    *[(name, f'+ {" ".join(opts)}', HIERARCHY + opts) for name, (opts, _) in FIXES.items()],
    *[(name, ' + '.join(FIXES[f][1] for f in fixes), HIERARCHY + [o for f in fixes for o in FIXES[f][0]])
      for name, fixes in COMBINATIONS.items()],
]


def run_curve(run):
    """[(step, acc@1, acc@10, mean rank)] of every evaluation of a run (its metrics.jsonl)."""
    path = run / 'metrics.jsonl'
    curve = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            m = json.loads(line)
            problem = metrics_problem(m) or (None if isinstance(m.get('step'), int) else 'no step')
        except (ValueError, RecursionError) as e:
            problem = f'not readable JSON ({type(e).__name__})'
        if problem:
            raise DatasetError(f'{path} line {n}: {problem} (delete the run folder {run} to train it again)')
        curve.append((m['step'], m['acc@1'], m['acc@10'], m['mean_rank']))
    return curve


def spread(values):
    """'mean ± half the range' of percentages (one value: the value)."""
    v = [100 * x for x in values]
    mean = sum(v) / len(v)
    return f'{mean:.2f}' if len(v) == 1 else f'{mean:.2f} ± {(max(v) - min(v)) / 2:.2f}'


def ablation(a, base, runs):
    """Every ABLATION row (or --rows) at --seeds: acc@1 of the last evaluation and the best one
    (the authors' protocol: best test acc@1 over the evaluations), acc@10 and mean rank of the
    last, mean ± half the range over seeds."""
    rows, data = [], {}
    chosen = [r for r in ABLATION if not a.rows or r[0] in a.rows]
    for name, label, opts in chosen:
        # Seed 0 is the default: its run is the one a table command trains with the same options.
        curves = [run_curve(runs.train(f'{name}-s{seed}', [*opts, *(['--seed', str(seed)] if seed else [])])[1])
                  for seed in a.seeds]
        last = [c[-1] for c in curves]
        best = [max(x[1] for x in c) for c in curves]
        late = [sum(x[1] for x in c[-3:]) / len(c[-3:]) for c in curves]
        data[name] = dict(label=label, options=opts, seeds=a.seeds, curves=curves)
        rows.append([label, spread([x[1] for x in last]), spread(best), spread(late), spread([x[2] for x in last]),
                     f'{sum(x[3] for x in last) / len(last):.2f}'])
    write(Path(a.out), a.name or 'ablation', f'Ablation on {a.dataset}: acc@1 / acc@10 (%), seeds {a.seeds}',
          ['row', 'acc@1 (last)', 'acc@1 (best)', 'acc@1 (last 3)', 'acc@10 (last)', 'mean rank (last)'], rows,
          data, notes(a, base) + ['"last": the last evaluation; "best": the highest acc@1 over the evaluations of '
                                  'a run (the authors\' protocol); "last 3": the mean of the last three '
                                  'evaluations (steadier than one). Mean ± half the range over the seeds.'])
    plot_curves(Path(a.out) / f'{a.name or "ablation"}.png', data, a.dataset)


COLOURS = otf.COLOURS + [(220, 120, 0), (60, 0, 200), (200, 0, 80), (0, 0, 0), (100, 60, 20), (0, 200, 200),
                         (160, 160, 255)]      # the ablation's many rows


def plot_curves(path, data, dataset, width=960, height=480, pad=56, legend=330):
    """acc@1 against the training step of every row: the mean over its seeds, and with several
    seeds a light band from the lowest to the highest seed (PIL only)."""
    from PIL import Image, ImageDraw
    img = Image.new('RGB', (width, height), 'white')
    d = ImageDraw.Draw(img)
    series = {}
    for row in data.values():
        steps = [x[0] for x in row['curves'][0]]
        per = [[100 * c[k][1] for c in row['curves'] if k < len(c)] for k in range(len(steps))]
        series[row['label']] = [(x, sum(v) / len(v), min(v), max(v)) for x, v in zip(steps, per)]
    top = max((hi for s in series.values() for *_, hi in s), default=1) * 1.1
    right = max((x for s in series.values() for x, *_ in s), default=1)

    def xy(x, v):
        return pad + x / right * (width - 2 * pad - legend), height - pad - v / top * (height - 2 * pad)
    d.line([xy(0, 0), xy(right, 0)], fill='black')
    d.line([xy(0, 0), xy(0, top)], fill='black')
    for v in range(0, int(top) + 1, 10):
        d.line([xy(0, v), xy(right, v)], fill=(235, 235, 235))
        d.text((pad - 24, xy(0, v)[1] - 6), f'{v}', fill='black')
    for k in range(5):
        x = round(right * k / 4)
        d.text((xy(x, 0)[0] - 12, height - pad + 8), f'{x}', fill='black')
    d.text((width // 2 - legend // 2 - 30, height - 24), 'training step', fill='black')
    for k, (label, pts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        if any(hi > lo for *_, lo, hi in pts):
            band = [xy(x, hi) for x, _, _, hi in pts] + [xy(x, lo) for x, _, lo, _ in reversed(pts)]
            d.polygon(band, fill=tuple(255 - (255 - c) // 6 for c in colour))
    for k, (label, pts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        d.line([xy(x, v) for x, v, *_ in pts], fill=colour, width=2)
        ly = pad + 16 * k
        d.line([(width - legend + 10, ly + 6), (width - legend + 25, ly + 6)], fill=colour, width=3)
        d.text((width - legend + 30, ly), label[:52], fill=colour)
    seeds = max(len(row['curves']) for row in data.values())
    d.text((pad, 12), f'{dataset}: acc@1 % against training steps'
                      + (f' (mean over {seeds} seeds; band: lowest to highest)' if seeds > 1 else ''), fill='black')
    img.save(path)


def notes(a, base):
    gpu = f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else ', no GPU'
    return [f'Command: `python tables.py {" ".join(a.argv)}`',
            f'Every row ran main.py with `{" ".join(base)}` plus its own options; figures are the last '
            f'evaluation of each run.', f'Machine: {torch.get_num_threads()} CPU threads{gpu}.']


ONTHEFLY = ('siamese', 'localised_coattn', 'hierarchy', 'hierarchy_plus')


def onthefly(a, base, runs):
    """On-the-fly retrieval (onthefly.py) of the runs of several methods (--methods; default
    ONTHEFLY): acc@1 / acc@10 at 20-100 % of the strokes, m@A and m@B, and one figure with every
    method's curves. Each run's evaluation is kept in <out>/onthefly/<run>/ and reused."""
    device = runtime.resolve_device('auto')
    name = a.name or 'onthefly'
    rows, data, curves = [], {}, {}
    for method in a.methods or ONTHEFLY:
        label = METHODS[method].label
        _, run = runs.train(method, ['--method', method, *row_extra(base, method)])
        folder = Path(a.out) / 'onthefly' / run.name
        saved = folder / f'onthefly_last{f"_n{a.sketches}" if a.sketches else ""}.json'
        if saved.is_file():
            m = json.loads(saved.read_text())
        else:
            model, args, state, path = load_model(run / 'last.pth', {'data_root': a.eval_data_root} if a.eval_data_root
                                                  else {}, device)
            m = otf.evaluate_checkpoint(model, args, state, path, device, folder, a.sketches)
        data[label] = dict(m, run=str(run))
        curves[label] = m['curve']
        rows.append([label, *[f'{pct(m[f"acc@1@{round(100 * f)}"])} / {pct(m[f"acc@10@{round(100 * f)}"])}'
                              for f in otf.FRACTIONS], pct(m['m@A']), pct(m['m@B'])])
    kind = next(iter(data.values()))['kind'] if data else ''
    write(Path(a.out), name, f'On-the-fly retrieval on {a.dataset}: acc@1 / acc@10 (%) at a share of the strokes, '
                             f'm@A, m@B (%)',
          ['method', *[f'{round(100 * f)} %' for f in otf.FRACTIONS], 'm@A', 'm@B'], rows, data,
          notes(a, base) + [f'Sketches: {next(iter(data.values()))["queries"] if data else 0} of the test split'
                            + (' (evenly spread, --sketches)' if a.sketches else '') + '.',
                            f'Steps: {kind}. m@A: the mean over the drawing of 1 / rank; m@B: the mean of the '
                            f'ranking percentile (G - rank) / (G - 1); both averaged over the test sketches '
                            f'(onthefly.py). Each run\'s last.pth.'])
    otf.plot_curves(Path(a.out) / f'{name}.png', curves, f'{a.dataset}: on-the-fly retrieval, acc@K against the '
                                                         f'share of strokes drawn')


TABLES = {'table1': table1, 'table2': table2, 'kregions': kregions, 'coarse_figure': coarse_figure,
          'ablation': ablation, 'onthefly': onthefly}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description='Reproduce a table of the paper; options not listed here are '
                                            'passed to every row\'s main.py run (python main.py --help).')
    p.add_argument('table', choices=list(TABLES))
    p.add_argument('--out', default=None, help='folder for the tables and runs (default: tables/<dataset>)')
    p.add_argument('--methods', nargs='+', choices=list(METHODS), help='table1: only these rows')
    p.add_argument('--proposed', default='hierarchy', choices=PROPOSED,
                   help='table2, kregions, coarse_figure: the model in the Proposed rows (hierarchy: the paper\'s '
                        'method; hierarchy_plus: ours, docs/method.md section 9); its files get a suffix')
    p.add_argument('--kregions_eval_only', action='store_true',
                   help='kregions: evaluate one model trained at k = 16 at each k instead of training each')
    p.add_argument('--figure_sketches', type=options.positive_int, default=3)
    p.add_argument('--figure', default=None, help='coarse_figure: the PNG (default Images/coarse_<dataset>.png)')
    p.add_argument('--rows', nargs='+', choices=[r[0] for r in ABLATION], help='ablation: only these rows')
    p.add_argument('--seeds', nargs='+', type=options.nonneg_int, default=[0], help='ablation: one run per seed')
    p.add_argument('--name', default=None,
                   help='ablation, onthefly: the name of the table files (default: the table\'s)')
    p.add_argument('--runs', default=None, metavar='DIR',
                   help='the folder of the runs, when they are not in --out/runs (e.g. another checkout\'s)')
    p.add_argument('--sketches', type=options.nonneg_int, default=0, metavar='N',
                   help='onthefly: only N test sketches, evenly spread over the split (0: all)')
    p.add_argument('--eval_data_root', default=None, metavar='DIR',
                   help='onthefly: where the runs\' dataset is now, when it moved since they were trained')
    a, base = p.parse_known_args(argv)
    a.argv = argv
    a.dataset = options.parse_args('main', base).dataset     # the row options are checked up front
    a.out = a.out or f'tables/{a.dataset}'
    runs = Runs(base, a.out, a.runs)
    try:
        TABLES[a.table](a, base, runs)
    except (DatasetError, CheckpointError, PretrainedWeightsError, FeatureCacheError, WriteError) as e:
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main()
