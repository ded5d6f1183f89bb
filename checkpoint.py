"""Checkpoints: written atomically, read without running code, checked against the model.

A checkpoint is a dict of tensors and plain values: 'args' (the run's options), 'model',
'optimizer', 'step', 'best_acc1', 'metrics', 'rng' (runtime.rng_state). It is read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers, so a
crafted .pth cannot run code. Every failure is one CheckpointError naming the file.
"""
import argparse
import io
from pathlib import Path

import torch

from files import WriteError, atomic_write

# The options that decide a model's parameters: a checkpoint loads only into the same values.
MODEL_OPTIONS = ('method', 'backbone', 'feature_layer', 'variant', 'dim', 'att_dim', 'separate_backbones',
                 'first_stage_dim', 'roi_size', 'node_norm')


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_checkpoint(path, **state):
    """torch.save to a unique temporary file, then rename: an interrupted or failed write (full
    disk) never leaves a torn checkpoint or a stray temporary file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    except WriteError as e:
        raise CheckpointError(str(e)) from None


def read_checkpoint(path):
    """The checkpoint dict of `path` (a .pth file, or a run folder: its last.pth)."""
    path = Path(path)
    if path.is_dir():
        path = path / 'last.pth'
    if not path.is_file():
        raise CheckpointError(f'{path}: no such checkpoint')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated zip, not a zip, refused pickle global, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{path}: not a readable checkpoint - truncated, not a .pth of this '
                              f'codebase, or holding objects other than tensors ({first[:200]})') from None
    if not isinstance(state, dict) or not {'args', 'model'} <= set(state):
        raise CheckpointError(f'{path}: not a checkpoint of this codebase (no stored options and weights)')
    return path, state


def load_checkpoint(path, defaults, overrides=None):
    """(path, state, args): the checkpoint and its run's options, rebuilt on `defaults` (a parsed
    options Namespace), updated with the stored options and then with `overrides` (the options the
    user typed now). A typed option that changes the model is refused, naming it."""
    path, state = read_checkpoint(path)
    stored = dict(state['args'])
    overrides = dict(overrides or {})
    changed = [k for k in MODEL_OPTIONS if k in overrides and k in stored and overrides[k] != stored[k]]
    if changed:
        raise CheckpointError(f'{path} holds a {describe(stored)} model; '
                              + ', '.join(f'--{k} {overrides[k]} (stored: {stored[k]})' for k in changed)
                              + ' would need another one')
    args = argparse.Namespace(**{**vars(defaults), **stored, **overrides})
    args.pretrained = 'none'        # the weights come from the checkpoint
    return path, state, args


def describe(args):
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    return (f"{get('method')} / {get('backbone')} ({get('feature_layer')}) / variant {get('variant')} / "
            f"dim {get('dim')}")


def load_model_state(model, state, path, args):
    """Load state['model'] into model, or one CheckpointError naming what does not fit."""
    try:
        model.load_state_dict(state['model'])
    except RuntimeError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        raise CheckpointError(f'{path}: its weights do not fit a {describe(args)} model '
                              f'({"; ".join(lines[1:3])[:300]})') from None
