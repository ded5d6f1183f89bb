"""Every command-line option of the project, shared by all entry points.

`parse_args(argv)` returns an `argparse.Namespace`; defaults are the paper's values (BMVC 2020,
SPEC sections 2-7) where the paper has one, except where a default must keep `python main.py`
runnable on a CPU with no downloads (the embedded dataset and the light backbone).
"""
import argparse

DATASETS = ('Synthetic', 'SyntheticGUI', 'ChairV2', 'ShoeV2', 'SWIRE', 'Folder')
BACKBONES = ('vgg16', 'inception_v3', 'resnet18_light')
METHODS = ('hierarchy', 'localised_coattn', 'no_coattn')
SKETCH_DETAILS = ('full', 'coarse', 'coarse++')

# Defaults that depend on the backbone. vgg16 / inception_v3: the paper's set-up (224 / 299 px
# input, ImageNet weights, Adam 1e-4). resnet18_light is ours, for a CPU without ImageNet weights:
# it starts from random weights, so it takes a larger learning rate, runs at 96 px with D = 256
# so that a 2-core CPU trains it in minutes, pools regions on a 3x3 RoIAlign grid (its map is
# only 6x6), sees photos as edge maps drawn like sketches, and scales region features to unit
# length (see README, 'Backbones and their defaults').
BACKBONE_DEFAULTS = {
    'vgg16': dict(image_size=224, pretrained='imagenet', dim=512, lr=1e-4, separate_backbones=False,
                  node_norm='none', photo_input='rgb', roi_size=7),
    'inception_v3': dict(image_size=299, pretrained='imagenet', dim=512, lr=1e-4, separate_backbones=False,
                  node_norm='none', photo_input='rgb', roi_size=7),
    'resnet18_light': dict(image_size=96, pretrained='none', dim=256, lr=1e-3, separate_backbones=False,
                           node_norm='l2', photo_input='edges', roi_size=3),
}
# The paper trains 200 epochs; the embedded datasets get a budget that `python main.py` (light
# backbone, 2-core CPU) finishes in under 10 minutes.
DATASET_EPOCHS = {'Synthetic': 3, 'SyntheticGUI': 3}
PAPER_EPOCHS = 200


def build_parser():
    p = argparse.ArgumentParser(
        description='Cross-Modal Hierarchical Modelling for FG-SBIR (BMVC 2020) - '
                    'training, evaluation and data options.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    d = p.add_argument_group('data')
    d.add_argument('--dataset', default='Synthetic', choices=DATASETS,
                   help='Synthetic / SyntheticGUI are generated into --data_root on first use; '
                        'ChairV2 / ShoeV2 use the QMUL layout; SWIRE the RICO layout; Folder a '
                        'pairs.csv of your own.')
    d.add_argument('--data_root', default='data',
                   help='folder holding <dataset>/ (and the QMUL box pickle); for Folder, the '
                        'folder holding pairs.csv')
    d.add_argument('--num_regions', type=int, default=16,
                   help='photo regions k: the first k proposals of each photo (box 0 = whole image)')
    d.add_argument('--sketch_detail', default='full', choices=SKETCH_DETAILS,
                   help='drop fine sketch detail (the coarse-sketch study); see sketch.py')
    d.add_argument('--line_width', type=int, default=3,
                   help='stroke width in pixels when rasterising vector sketches on the 256 canvas')
    d.add_argument('--image_size', type=int, default=None,
                   help='side of the square network input; default: 224 (vgg16), 299 '
                        '(inception_v3), 96 (resnet18_light)')
    d.add_argument('--photo_input', default=None, choices=('rgb', 'edges'),
                   help='what the network sees of a photo: the RGB image (the paper) or its Canny '
                        'edge map drawn like a sketch (Triplet-SN practice); default: rgb (vgg16, '
                        'inception_v3), edges (resnet18_light, trained from scratch)')
    d.add_argument('--flip_prob', type=float, default=0.5,
                   help='probability of the joint horizontal flip of image and boxes in training')
    d.add_argument('--synthetic_seed', type=int, default=0,
                   help='seed of the embedded procedural dataset')
    d.add_argument('--synthetic_size', nargs='+', default=None, metavar='KEY=N',
                   help='size of the embedded dataset, e.g. train_photos=1000 test_photos=200 '
                        'sketches_per_photo=3 (Synthetic) or screens=500 (SyntheticGUI); '
                        'default: synthetic.DEFAULT_SIZE')
    d.add_argument('--workers', type=int, default=0, help='DataLoader worker processes')
    d.add_argument('--max_sketch_nodes', type=int, default=16,
                   help='raster sketches (SWIRE, Folder images): at most this many nodes, the '
                        'whole-image box included; the largest ink boxes are kept (0 = no cap)')
    d.add_argument('--merge_gap', type=float, default=0.01,
                   help='raster sketches: ink blobs closer than this fraction of the longer image '
                        'side (in x and in y) are merged into one node')
    d.add_argument('--summary', action='store_true',
                   help='dataset.py: validate the dataset and print its counts and repairs')
    d.add_argument('--precompute_boxes', default=None, metavar='PHOTO_DIR',
                   help='dataset.py: compute selective-search boxes for every image under '
                        'PHOTO_DIR (keys = paths relative to it) into --boxes_out')
    d.add_argument('--boxes_out', default=None, metavar='FILE',
                   help='dataset.py: box pickle written by --precompute_boxes')

    m = p.add_argument_group('model')
    m.add_argument('--backbone', default='resnet18_light', choices=BACKBONES,
                   help='vgg16 is the paper\'s; resnet18_light trains on a 2-core CPU')
    m.add_argument('--pretrained', default=None,
                   help='imagenet | none | PATH to a local torchvision state_dict; default: '
                        'imagenet for vgg16 and inception_v3, none for resnet18_light')
    m.add_argument('--method', default='hierarchy', choices=METHODS,
                   help='hierarchy: the proposed model; localised_coattn: one co-attention round, '
                        'max-pool, L2 (B-Localised-Coattn = w/o Hierarchy); no_coattn: node fusion '
                        'without co-attention (w/o Localised-Coattn)')
    m.add_argument('--variant', default='paper', choices=('paper', 'released'),
                   help='paper: learned gate, projected compatibility, ReLU merge per branch; '
                        'released: the authors\' pre-Sep-2020 code (product gate, dot '
                        'compatibility, one shared linear merge)')
    m.add_argument('--dim', type=int, default=None,
                   help='node feature size D (backbone channels are projected to it when they '
                        'differ); default: 512 (vgg16, inception_v3), 256 (resnet18_light)')
    m.add_argument('--att_dim', type=int, default=128, help='co-attention projection size')
    m.add_argument('--roi_size', type=int, default=None,
                   help='RoIAlign output grid (sampling ratio 2), max-pooled to one vector per '
                        'node; default: 7 (vgg16, inception_v3, the paper), 3 (resnet18_light: a '
                        '6x6 map at 96 px, where a 7x7 grid only resamples the same cells and its '
                        'CPU backward took 38 %% of a training step)')
    m.add_argument('--node_norm', default=None, choices=('none', 'l2'),
                   help='scale each region feature to unit length before the head; default: none '
                        '(vgg16, inception_v3, the paper), l2 (resnet18_light)')
    m.add_argument('--head_init', default='identity', choices=('identity', 'default'),
                   help='identity: every merge starts as the mean of its two nodes and every '
                        'co-attention update starts small, so the fresh head passes the region '
                        'features on (ours; the paper does not say); default: PyTorch\'s init, as '
                        'the authors\' code')
    m.add_argument('--separate_backbones', action=argparse.BooleanOptionalAction, default=None,
                   help='give sketch and photo their own backbone (default: one shared backbone)')

    t = p.add_argument_group('training')
    t.add_argument('--batch_size', type=int, default=16)
    t.add_argument('--lr', type=float, default=None,
                   help='Adam learning rate; default: 1e-4 (vgg16, inception_v3, the paper), '
                        '1e-3 (resnet18_light, trained from scratch)')
    t.add_argument('--lr_schedule', default='constant', choices=('constant', 'cosine'),
                   help='constant: --lr throughout (the paper); cosine: from --lr down to 0 over '
                        'the run (--max_steps, or --epochs)')
    t.add_argument('--negatives', default='sampled', choices=('sampled', 'batch', 'batch_hard'),
                   help='sampled: one negative per sketch, the photo of a random other training '
                        'sketch (the paper); batch: every other photo of the batch; batch_hard: '
                        'the closest other photo of the batch')
    t.add_argument('--margin', type=float, default=0.2,
                   help='triplet margin on squared Euclidean distances')
    t.add_argument('--epochs', type=int, default=None,
                   help=f'default: {PAPER_EPOCHS} (the paper), 3 for the embedded datasets')
    t.add_argument('--max_steps', type=int, default=None,
                   help='stop after this many optimiser steps (overrides --epochs)')
    t.add_argument('--eval_every', type=int, default=None,
                   help='evaluate every N steps (default: at the end of every epoch)')
    t.add_argument('--output_dir', default='runs', help='run folders are created in here')
    t.add_argument('--run_name', default=None, help='run folder name (default: a time stamp)')
    t.add_argument('--resume', default=None,
                   help='a run folder or a .pth checkpoint to continue from')
    t.add_argument('--seed', type=int, default=0)
    t.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))

    e = p.add_argument_group('evaluation')
    e.add_argument('--checkpoint', default=None, help='evaluate.py: checkpoint to evaluate')
    e.add_argument('--pair_chunk', type=int, default=2048,
                   help='sketch-photo pairs per batch through the pairwise head at evaluation')
    e.add_argument('--eval_batch_size', type=int, default=32,
                   help='images per batch when computing region features at evaluation')
    e.add_argument('--figure_queries', type=int, default=4,
                   help='query sketches shown in the retrieval figure')
    return p


def resolve(args):
    """Fill the defaults that depend on other options."""
    for key, value in BACKBONE_DEFAULTS[args.backbone].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs is None:
        args.epochs = DATASET_EPOCHS.get(args.dataset, PAPER_EPOCHS)
    return args


def parse_args(argv=None):
    return resolve(build_parser().parse_args(argv))


def explicit_args(argv):
    """{option: value} for the options actually written in argv (defaults left out), so that a
    checkpoint's stored options can be overridden by exactly what the user typed."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))
