"""Checkpoints: written atomically, read without running code, checked against the model.

A checkpoint is a dict of tensors and plain values: 'format' (FORMAT), 'model_config' (the
methods.ModelConfig that built the model, as a dict), 'model' (its weights), 'args' (the run's
options), 'optimizer', 'step', 'best_acc1', 'metrics', 'rng' (runtime.rng_state of rank 0) and
'rng_ranks' (every process's, for an exact resume under torchrun). It is read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers, so a
crafted .pth cannot run code; its stored options are checked as the command line checks them.
Every failure is one CheckpointError naming the file.
"""
import argparse
import dataclasses
import io
from pathlib import Path

import torch

import options
from backbones import BACKBONES
from files import WriteError, atomic_write
from methods import ModelConfig

# 1: options and weights only (the model was rebuilt from the options); 2: + 'model_config'.
FORMAT = 2
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


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
    if not (isinstance(state['args'], dict) and isinstance(state['model'], dict)
            and all(torch.is_tensor(v) for v in state['model'].values())):
        raise CheckpointError(f'{path}: not a checkpoint of this codebase (its options are not a dict or '
                              f'its weights not a dict of tensors)')
    return path, state


def model_state(model):
    """The entries of a checkpoint that rebuild `model` (built by methods.build_model): its config and weights."""
    return dict(format=FORMAT, model_config=dataclasses.asdict(model.config), model=model.state_dict())


def model_config(state, path, args):
    """The methods.ModelConfig that built a checkpoint's model: stored beside the weights (format 2),
    or, in a format-1 checkpoint, taken from its options `args` (stored over the defaults)."""
    version = state.get('format', 1)
    if version == 1:
        return ModelConfig.from_options(args)
    stored = state.get('model_config')
    if version != FORMAT or not isinstance(stored, dict) or set(stored) != set(MODEL_FIELDS):
        raise CheckpointError(f'{path}: a checkpoint of format {version!r}; this code reads formats 1 and '
                              f'{FORMAT} (a checkpoint of another version of this code)')
    check_stored_options(stored, path)
    return ModelConfig(**stored)


def check_stored_options(stored, path):
    """Refuse stored options this code cannot build (a checkpoint of another version, or an
    edited one): a name outside an option's choices, a number its checked type rejects."""
    for action in options.build_parser('main')._actions:
        value = stored.get(action.dest)
        if value is None or action.nargs is not None or isinstance(value, bool):
            continue
        why = None
        if action.choices is not None:
            if value not in action.choices:
                why = f'expected one of {", ".join(map(str, action.choices))}'
        elif action.type is not None and action.type is not str:
            try:
                if action.type(str(value)) != value:
                    why = f'not a value of type {getattr(action.type, "__name__", action.type)}'
            except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
                why = str(e)
        if why:
            raise CheckpointError(f'{path}: its stored option --{action.dest} {value!r} is not valid in this '
                                  f'code ({why}; a checkpoint of another version, or edited)')
    layers = getattr(BACKBONES.get(stored.get('backbone')), 'layers', None)
    if layers is not None and stored.get('feature_layer') not in (None, *layers):
        raise CheckpointError(f"{path}: its stored --feature_layer {stored['feature_layer']!r} is not a layer of "
                              f"{stored['backbone']} ({', '.join(layers)})")


def load_checkpoint(path, defaults, overrides=None):
    """(path, state, args): the checkpoint and its run's options, rebuilt on `defaults` (a parsed
    options Namespace), updated with the stored options and then with `overrides` (the options the
    user typed now). A typed option that changes the model is refused, naming it."""
    path, state = read_checkpoint(path)
    stored = dict(state['args'])
    check_stored_options(stored, path)
    config = state.get('model_config')
    differ = [k for k in MODEL_FIELDS if isinstance(config, dict) and k in stored and k in config
              and stored[k] != config[k]]
    if differ:     # the model is built from the options on --resume, from the config otherwise
        raise CheckpointError(f'{path}: its stored options and model config disagree ('
                              + ', '.join(f'{k} {stored[k]!r} / {config[k]!r}' for k in differ)
                              + '; an edited checkpoint)')
    overrides = dict(overrides or {})
    changed = [k for k in MODEL_FIELDS if k in overrides and k in stored and overrides[k] != stored[k]]
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
