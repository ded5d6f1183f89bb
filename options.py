"""Command-line options, in parts that each program composes (as DINO's get_args_parser with
argparse `parents=`), so that each program's --help lists only what it reads.

    parse_args('main', argv)       data + model + training + evaluation options
    parse_args('evaluate', argv)   data + evaluation options + the checkpoint / search options
    parse_args('dataset', argv)    data options + --summary

Names come from the tables of the modules that own them (layouts.READERS, backbones.BACKBONES,
methods.METHODS, ...); options.py imports nothing else, and no module it imports imports it. The
options become the data layer's DataConfig and the model's ModelConfig in experiment.py. Defaults are the paper's (arXiv 2007.15103; docs/method.md) where it has one; options
left unset are filled from the backbone's row, then the method's (`resolve`). Every numeric option
is checked when parsed, with a one-line error.
"""
import argparse
import math

import backbones
import layouts
import losses
import methods
from head import MERGE_ACTS, READOUTS, ROUND_NORMS, VARIANTS
from hierarchy import INITS, LEVEL_MERGES, MERGES, SELECTIONS
from model import NODE_ACTS
from sketch import DETAIL_FRACTION, MAX_POINTS, MAX_STROKES
from transforms import PHOTO_INPUTS

# The paper trains 200 epochs; the embedded datasets get a budget that `python main.py` (light
# backbone, 2-core CPU) finishes in under 10 minutes.
DATASET_EPOCHS = {'Synthetic': 3, 'SyntheticGUI': 3}
# The paper's head (docs/method.md, sections 3-5): what the hierarchy's departures default to
# when neither the command line nor the method's row sets them (merge_act None: the variant's).
PAPER_HEAD = dict(node_act='none', merge='linear', selection='gumbel', readout='root', round_norm='none',
                  level_merges='one', level_loss=False)
DEFAULT_BACKBONE = 'resnet18_light'
PAPER_EPOCHS = 200


# ----------------------------------------------------------------------------- checked types
def _number(kind, ok, rule):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {rule}, got {text!r}') from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f'must be {rule}, got {text!r}')
        return value
    parse.__name__ = rule   # argparse names the type in some messages
    return parse


positive_int = _number(int, lambda v: v >= 1, 'an integer >= 1')
nonneg_int = _number(int, lambda v: v >= 0, 'an integer >= 0')
positive_float = _number(float, lambda v: v > 0, 'a finite number > 0')
nonneg_float = _number(float, lambda v: v >= 0, 'a finite number >= 0')
probability = _number(float, lambda v: 0 <= v <= 1, 'a probability in [0, 1]')


def size_item(text):
    """'train_photos=100' -> ('train_photos', 100) (--synthetic_size)."""
    key, sep, value = text.partition('=')
    if not (sep and key and value.isdigit() and 1 <= int(value) <= MAX_SYNTHETIC_SIZE):
        raise argparse.ArgumentTypeError(f'expected KEY=N with 1 <= N <= {MAX_SYNTHETIC_SIZE}, e.g. '
                                         f'train_photos=100, got {text!r}')
    return key, int(value)


# The options whose cost (time, memory) grows with their value, and the range each may take: far
# beyond any real use, but a typo (--image_size 20000, --merge_gap 1000) is one clear line instead of
# hours or an out-of-memory. Applied to the parsers by build_parser.
RANGES = {
    'image_size': (32, 2048), 'num_regions': (1, 256), 'line_width': (1, 32), 'merge_gap': (0, 1),
    'max_sketch_nodes': (0, 256), 'max_sketch_strokes': (1, 4096), 'max_sketch_points': (2, 65536),
    'dim': (1, 8192), 'att_dim': (1, 8192), 'seq_dim': (1, 8192), 'first_stage_dim': (0, 8192), 'roi_size': (1, 32),
    'batch_size': (1, 4096), 'eval_batch_size': (1, 4096), 'pair_chunk': (1, 2 ** 20), 'workers': (0, 256),
    'epochs': (1, 10 ** 5), 'max_steps': (1, 10 ** 9), 'eval_every': (1, 10 ** 9), 'rerank': (0, 10 ** 6),
    'figure_queries': (1, 64), 'topk': (1, 10 ** 4), 'seed': (0, 2 ** 32 - 1), 'synthetic_seed': (0, 2 ** 32 - 1),
}
MAX_SYNTHETIC_SIZE = 10 ** 5


def in_range(parse, lo, hi):
    """The checked type `parse`, further limited to [lo, hi]."""
    def check(text):
        value = parse(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f'must be in [{lo}, {hi}], got {text!r}')
        return value
    check.__name__ = f'{parse.__name__} in [{lo}, {hi}]'
    return check


def run_name(text):
    """A plain folder name: no path separators, not '.' or '..'."""
    if not text or text in ('.', '..') or '/' in text or '\\' in text:
        raise argparse.ArgumentTypeError(f'must be a plain folder name (no / or ..), got {text!r}')
    return text


def stages(text):
    """--freeze_backbone: an integer >= 0 or 'all' (resolved to the backbone's stage count)."""
    return text if text == 'all' else nonneg_int(text)


def head_init(text):
    if text == 'default':
        raise argparse.ArgumentTypeError("'default' was renamed 'pytorch' (PyTorch's initialisation, "
                                         "as the authors' code); the default is 'identity'")
    if text not in INITS:
        raise argparse.ArgumentTypeError(f'expected one of {", ".join(INITS)}, got {text!r}')
    return text


# ----------------------------------------------------------------------------- parts
def data_part():
    p = argparse.ArgumentParser(add_help=False)
    d = p.add_argument_group('data')
    d.add_argument('--dataset', default='Synthetic', choices=list(layouts.READERS),
                   help='Synthetic / SyntheticGUI are generated into --data_root on first use; '
                        'ChairV2 / ShoeV2 use the QMUL layout; SWIRE the RICO layout; Folder a '
                        'pairs.csv of your own.')
    d.add_argument('--data_root', default='data',
                   help='folder holding <dataset>/ (and the QMUL box pickle); for Folder, the '
                        'folder holding pairs.csv')
    d.add_argument('--num_regions', type=positive_int, default=16,
                   help='photo regions k: the first k proposals of each photo (box 0 = whole image)')
    d.add_argument('--sketch_detail', default='full', choices=list(DETAIL_FRACTION),
                   help='drop fine sketch detail (the coarse-sketch study); see sketch.py')
    d.add_argument('--sketch_whole_box', action='store_true',
                   help='vector sketches get a whole-sketch node before their stroke nodes (ours; raster '
                        'sketches always have one, the paper\'s vector sketches do not)')
    d.add_argument('--line_width', type=positive_int, default=3,
                   help='stroke width in pixels when rasterising vector sketches on the 256 canvas')
    d.add_argument('--image_size', type=positive_int, default=None,
                   help='side of the square network input; default: the backbone\'s (backbones.py)')
    d.add_argument('--photo_input', default=None, choices=PHOTO_INPUTS,
                   help='what the network sees of a photo: the RGB image (the paper) or its Canny '
                        'edge map drawn like a sketch (Triplet-SN practice, for networks trained '
                        'from scratch); default: the backbone\'s')
    d.add_argument('--validation', type=_number(float, lambda v: 0 <= v < 1, 'a fraction in [0, 1)'), default=0.0,
                   metavar='FRACTION',
                   help='evaluate on this fraction of the training photos (chosen by an md5 of their names) '
                        'and their sketches, held out of training, instead of the test split: for choosing '
                        'settings without looking at the test photos (0 = the test split)')
    d.add_argument('--flip_prob', type=probability, default=0.5,
                   help='probability of the joint horizontal flip of a training triplet')
    d.add_argument('--synthetic_seed', type=nonneg_int, default=0,
                   help='seed of the embedded procedural dataset')
    d.add_argument('--synthetic_size', nargs='+', type=size_item, default=None, metavar='KEY=N',
                   help='size of the embedded dataset, e.g. train_photos=1000 test_photos=200 '
                        'sketches_per_photo=3 (Synthetic) or screens=500 (SyntheticGUI)')
    d.add_argument('--workers', type=nonneg_int, default=0, help='DataLoader worker processes')
    d.add_argument('--image_cache', action=argparse.BooleanOptionalAction, default=True,
                   help='keep decoded, resized images and drawn sketches in memory (uint8)')
    d.add_argument('--max_sketch_nodes', type=nonneg_int, default=16,
                   help='raster sketches (SWIRE, Folder images): at most this many nodes, the '
                        'whole-image box included; the largest ink boxes are kept (0 = no cap)')
    d.add_argument('--max_sketch_strokes', type=positive_int, default=MAX_STROKES,
                   help='vector sketches: more strokes than this is an error naming the file (real ChairV2 '
                        'sketches have at most 15)')
    d.add_argument('--max_sketch_points', type=positive_int, default=MAX_POINTS,
                   help='vector sketches: more points than this is an error naming the file')
    d.add_argument('--merge_gap', type=nonneg_float, default=0.01,
                   help='raster sketches: ink blobs closer than this fraction of the longer image '
                        'side (in x and in y) are merged into one node')
    return p


def model_part():
    p = argparse.ArgumentParser(add_help=False)
    m = p.add_argument_group('model')
    m.add_argument('--method', default='hierarchy', choices=list(methods.METHODS),
                   help='; '.join(f'{k}: {v.label}, {v.help}' for k, v in methods.METHODS.items()))
    m.add_argument('--backbone', default=None, choices=list(backbones.BACKBONES),
                   help=f'vgg16 is the paper\'s; the others are listed in backbones.py (default: the '
                        f'method\'s, else {DEFAULT_BACKBONE})')
    m.add_argument('--feature_layer', default=None,
                   help='which feature map of the backbone the regions are pooled from, e.g. '
                        'stride16 | stride32 | head (backbones.py); default: the backbone\'s')
    m.add_argument('--pretrained', default=None,
                   help='imagenet | none | PATH to a local weights file; default: the backbone\'s')
    m.add_argument('--hierarchy', default='learned', choices=('learned', 'explicit'),
                   help='learned: the paper\'s node fusion; explicit: GUI photos (SWIRE layout) fuse along '
                        'their view-hierarchy tree instead (Table 2\'s Explicit Hierarchy), sketches as learned')
    m.add_argument('--variant', default='paper', choices=list(VARIANTS),
                   help='paper: learned gate, projected compatibility, ReLU merge per branch; '
                        'released: the authors\' pre-Sep-2020 code (product gate, dot '
                        'compatibility, one shared linear merge)')
    m.add_argument('--dim', type=positive_int, default=None,
                   help='node feature size D (backbone channels are projected to it when they '
                        'differ); default: the backbone\'s')
    m.add_argument('--att_dim', type=positive_int, default=128, help='co-attention projection size')
    m.add_argument('--roi_size', type=positive_int, default=None,
                   help='RoIAlign output grid (sampling ratio 2), max-pooled to one vector per node; '
                        'default: the backbone\'s (7 for vgg16, the paper)')
    m.add_argument('--node_norm', default=None, choices=('none', 'l2'),
                   help='scale each region feature to unit length before the head; default: the backbone\'s')
    m.add_argument('--head_init', type=head_init, default='identity', metavar='{' + ','.join(INITS) + '}',
                   help='identity: every merge starts as the mean of its two nodes and every '
                        'co-attention update starts small, so the fresh head passes the region '
                        'features on (ours; the paper does not say); pytorch: PyTorch\'s init, as '
                        'the authors\' code')
    h = p.add_argument_group('the hierarchy\'s departures from the paper (docs/method.md, section 9; '
                             'default: the method\'s, the paper\'s for --method hierarchy)')
    h.add_argument('--node_act', default=None, choices=NODE_ACTS,
                   help='relu: region nodes made non-negative after the projection to D, as VGG-16\'s pooled '
                        'features are (what the merge\'s ReLU assumes)')
    h.add_argument('--merge', default=None, choices=MERGES,
                   help='linear: phi(W_F [x_a; x_b] + b) (the paper); weighted: the children scaled by their '
                        'leaf counts, so the identity init gives the mean of the leaves for any tree; maxres: '
                        'max(x_a, x_b) + W_F [x_a; x_b] + b from W_F = 0, the max-pool of the leaves at init')
    h.add_argument('--merge_act', default=None, choices=MERGE_ACTS,
                   help='phi of the linear / weighted merge (default: the variant\'s, relu for paper)')
    h.add_argument('--selection', default=None, choices=SELECTIONS,
                   help='gumbel: straight-through Gumbel-softmax on the compatibility (the paper); scaled: '
                        'cosine compatibility times a learned scale from 10, so training trees follow the '
                        'greedy ones; balanced: only pairs of the smallest combined size, the same balanced '
                        'tree shape in training and test; balanced+scaled: both')
    h.add_argument('--readout', default=None, choices=READOUTS,
                   help='root: the last node is the embedding (the paper); root+pool: [L2 root; L2 max-pool '
                        'of the nodes after the first co-attention round]')
    h.add_argument('--level_merges', default=None, choices=LEVEL_MERGES,
                   help='one: a fusion level merges one pair, n - 1 levels (the paper); all: floor(n / 2) '
                        'disjoint pairs picked one after another, ceil(log2 n) levels and as many '
                        'co-attention rounds')
    h.add_argument('--round_norm', default=None, choices=ROUND_NORMS,
                   help='l2: nodes back to unit length after every round of co-attention and fusion')
    h.add_argument('--level_loss', action=argparse.BooleanOptionalAction, default=None,
                   help='add a triplet term at every fusion level (L2 max-pool of each side\'s nodes after '
                        'the round), averaged over the levels; ranking still uses the readout')
    m.add_argument('--separate_backbones', action=argparse.BooleanOptionalAction, default=None,
                   help='give sketch and photo their own backbone (default: one shared backbone)')
    m.add_argument('--seq_dim', type=positive_int, default=768,
                   help='width of the vector-sketch Transformer (sketchbert, sketchformer; 768 in the paper)')
    m.add_argument('--first_stage_dim', type=nonneg_int, default=None,
                   help='size of the pair-independent first-stage embedding trained beside the '
                        'pairwise head for two-stage retrieval (--rerank); 0 = none')
    return p


def train_part():
    p = argparse.ArgumentParser(add_help=False)
    t = p.add_argument_group('training')
    t.add_argument('--batch_size', type=positive_int, default=16,
                   help='triplets per optimiser step (over all processes with torchrun)')
    t.add_argument('--lr', type=positive_float, default=None,
                   help='Adam learning rate; default: the backbone\'s (1e-4 for vgg16, the paper)')
    t.add_argument('--freeze_backbone', type=stages, default=0, metavar='N|all',
                   help='the first N stages of the backbone (its modules up to --feature_layer, listed in '
                        'backbones.py) do not train, batch norm included; their output is computed once per '
                        'image and flip and cached (the fast research loop); all = the whole backbone')
    t.add_argument('--feature_cache', default=None, metavar='FILE',
                   help='with --freeze_backbone: keep the frozen stages\' outputs in FILE across runs (keyed by '
                        'the images\' pixels; a file written for other weights or another N is refused); '
                        'default: in memory for this run only')
    t.add_argument('--head_lr_mult', type=positive_float, default=None,
                   help='learning rate of everything but the backbone (region projection, head, '
                        'embeddings), as a multiple of --lr; default: the method\'s, else 1')
    t.add_argument('--lr_schedule', default='constant', choices=('constant', 'cosine'),
                   help='constant: --lr throughout (the paper); cosine: from --lr down to 0 over the run')
    t.add_argument('--negatives', default='sampled', choices=losses.NEGATIVES,
                   help='sampled: one negative per sketch, the photo of a random other training '
                        'sketch (the paper); batch: every other photo of the batch; batch_hard: '
                        'the closest other photo of the batch')
    t.add_argument('--margin', type=nonneg_float, default=None,
                   help='triplet margin on squared Euclidean distances (0.2, the paper)')
    t.add_argument('--aux_weight', type=nonneg_float, default=1.0,
                   help='weight of the first-stage branch\'s triplet loss (with --first_stage_dim)')
    t.add_argument('--epochs', type=positive_int, default=None,
                   help=f'default: {PAPER_EPOCHS} (the paper), 3 for the embedded datasets')
    t.add_argument('--max_steps', type=positive_int, default=None,
                   help='stop after this many optimiser steps (overrides --epochs)')
    t.add_argument('--eval_every', type=positive_int, default=None,
                   help='evaluate every N steps (default: at the end of every epoch)')
    t.add_argument('--output_dir', default='runs', help='run folders are created in here')
    t.add_argument('--run_name', type=run_name, default=None,
                   help='run folder name (default: time stamp, dataset, backbone, method); an '
                        'existing folder is refused')
    t.add_argument('--resume', default=None,
                   help='a run folder or a .pth checkpoint to continue from, on the same data (a different '
                        '--dataset, --data_root or data option is refused: see --init_from)')
    t.add_argument('--init_from', default=None, metavar='CKPT',
                   help='a new run (a new folder, step 0) that starts from the weights of CKPT; its model '
                        'options are taken from CKPT, its data options from this command line')
    t.add_argument('--seed', type=nonneg_int, default=0)
    t.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    t.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'),
                   help='mixed precision (autocast) for training and evaluation: CUDA; bf16 also on a CPU. '
                        'The pairwise head runs in float32 either way')
    t.add_argument('--tf32', action='store_true',
                   help='CUDA: TensorFloat-32 for float32 matrix products and convolutions (faster on '
                        'Ampere and later, ~10 mantissa bits)')
    return p


def eval_part():
    p = argparse.ArgumentParser(add_help=False)
    e = p.add_argument_group('evaluation')
    e.add_argument('--rerank', type=nonneg_int, default=None,
                   help='two-stage retrieval: rank the gallery by the first-stage embedding, then '
                        'the top M by the pairwise head (0 = the head on the whole gallery); '
                        'default: 0, or 20 when the model has a first stage')
    e.add_argument('--pair_chunk', type=positive_int, default=2048,
                   help='sketch-photo pairs per batch through the pairwise head at evaluation')
    e.add_argument('--eval_batch_size', type=positive_int, default=32,
                   help='images per batch when computing region features at evaluation')
    e.add_argument('--figure_queries', type=nonneg_int, default=4,
                   help='query sketches shown in the retrieval figure')
    return p


def evaluate_part():
    p = argparse.ArgumentParser(add_help=False)
    c = p.add_argument_group('checkpoint and search')
    c.add_argument('--checkpoint', required=True, help='the .pth checkpoint to evaluate or search with')
    c.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    c.add_argument('--query', default=None,
                   help='search: a raster sketch image, a vector sketch .npy (L, 3), or a test '
                        'sketch key of the dataset; prints the ranked gallery instead of evaluating')
    c.add_argument('--gallery', default=None,
                   help='search: a folder of photos (default: the test gallery of the dataset); its '
                        'index (region features, first-stage embeddings) is built once and reused')
    c.add_argument('--topk', type=positive_int, default=10, help='search: photos to print')
    c.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'),
                   help='mixed precision (autocast) for the features: CUDA; bf16 also on a CPU')
    c.add_argument('--onthefly', action='store_true',
                   help='on-the-fly retrieval (onthefly.py): rank the gallery after every stroke of each test '
                        'sketch; acc@1 / acc@10 at 20-100 %% of the strokes, m@A, m@B and their curve')
    c.add_argument('--out', default=None, help='--onthefly: folder for its JSON and PNG (default: the checkpoint\'s)')
    c.add_argument('--onthefly_sketches', type=nonneg_int, default=0, metavar='N',
                   help='--onthefly: only N test sketches, evenly spread over the split (0: all)')
    return p


def dataset_part():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('--summary', action='store_true',
                   help='validate the dataset and print its counts, node statistics and repairs')
    return p


PROGRAMS = {
    'main': ('Train a model (the proposed one by default) with the triplet loss.',
             (data_part, model_part, train_part, eval_part)),
    'evaluate': ('Evaluate a checkpoint on a test split, or search a gallery with one sketch.',
                 (data_part, eval_part, evaluate_part)),
    'dataset': ('Validate a dataset and print its summary.', (data_part, dataset_part)),
}


def build_parser(program):
    description, parts = PROGRAMS[program]
    parser = argparse.ArgumentParser(description=f'Cross-Modal Hierarchical Modelling for FG-SBIR - {description}',
                                     parents=[part() for part in parts],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        if action.dest in RANGES:
            action.type = in_range(action.type, *RANGES[action.dest])
    return parser


def parse_args(program, argv=None):
    return resolve(build_parser(program).parse_args(argv))


def explicit_args(program, argv):
    """{option: value} for the options actually written in argv, so that a checkpoint's stored
    options can be overridden by exactly what the user typed. (argparse sets a default only for
    names the namespace lacks: a namespace pre-filled with a marker keeps the untyped ones apart.)"""
    parser = build_parser(program)
    names = vars(parser.parse_args(['--checkpoint', '-'] if program == 'evaluate' else []))
    unset = object()
    parsed = parser.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in names}))
    return {k: v for k, v in vars(parsed).items() if v is not unset}


def resolve(args):
    """Fill the options left unset (None) from the backbone's row, then the method's; the epochs
    from the dataset. Options a program does not have are left alone."""
    if hasattr(args, 'backbone'):
        method = methods.METHODS[args.method].defaults
        args.backbone = args.backbone or method.get('backbone', DEFAULT_BACKBONE)
        b = backbones.BACKBONES[args.backbone]
        fill = {'feature_layer': b.default_layer, 'margin': 0.2, 'first_stage_dim': 0, 'head_lr_mult': 1.0,
                **PAPER_HEAD, **b.defaults, **method}
        for key, value in fill.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        if args.feature_layer not in b.layers:
            raise SystemExit(f'error: --feature_layer {args.feature_layer}: {args.backbone} has '
                             f'{", ".join(b.layers)}')
        count = len(b.layers[args.feature_layer].modules)
        freeze = getattr(args, 'freeze_backbone', 0)
        if freeze == 'all':
            args.freeze_backbone = count
        elif freeze > count:
            raise SystemExit(f'error: --freeze_backbone {freeze}: {args.backbone} up to {args.feature_layer} has '
                             f'{count} stages (--freeze_backbone all freezes them all)')
        if getattr(args, 'feature_cache', None) and not args.freeze_backbone:
            raise SystemExit('error: --feature_cache needs --freeze_backbone N (only frozen stages are cached)')
    if getattr(args, 'rerank', 0) is None and hasattr(args, 'first_stage_dim'):
        args.rerank = 20 if args.first_stage_dim else 0
    if getattr(args, 'epochs', 0) is None:
        args.epochs = DATASET_EPOCHS.get(args.dataset, PAPER_EPOCHS)
    return args
