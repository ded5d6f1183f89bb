"""Generate an embedded dataset and optionally a photo | sketch preview grid:

    python -m synthetic --name Synthetic --data_root data --preview Images/synthetic_preview.png
    python -m synthetic --name SyntheticGUI --size screens=50 sketches_per_screen=2
"""
import argparse
import time

from options import (  # the --synthetic_size / --synthetic_seed parsers of main.py
    nonneg_int,
    size_item,
)
from synthetic.cache import (
    DEFAULT_SIZE,
    GENERATORS,
    ensure_synthetic,
    preview,
    read_marker,
)


def main(argv=None):
    """The command line: generate (or find up to date) <data_root>/<name>, then the preview."""
    p = argparse.ArgumentParser(prog='python -m synthetic',
                                description='Generate the embedded procedural dataset and a preview grid.')
    p.add_argument('--name', default='Synthetic', choices=sorted(GENERATORS))
    p.add_argument('--data_root', default='data')
    p.add_argument('--seed', type=nonneg_int, default=0)
    p.add_argument('--preview', default=None, help='write a photo | sketch grid to this PNG')
    p.add_argument('--size', nargs='*', type=size_item, default=[], metavar='KEY=N',
                   help=f'size overrides, e.g. train_photos=100 (defaults: {DEFAULT_SIZE})')
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        folder = ensure_synthetic(a.data_root, a.name, a.seed, **dict(a.size))
    except ValueError as e:                              # an unknown size key for this dataset
        p.error(str(e))
    print(f'{folder}: ready in {time.time() - t0:.1f} s ({read_marker(folder)})')
    if a.preview:
        print('preview:', preview(folder, a.name, a.preview))


if __name__ == '__main__':
    main()
