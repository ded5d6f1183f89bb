"""What a run is made of, from its options or its checkpoint: the one place where the options
meet the data layer and the model stack, for every entry point (main.py, evaluate.py, tables.py,
the benchmarks).

    data_config(args)          the data layer's DataConfig
    setup(args, device)        datasets, model, loss and optimiser of a training run (Setup)
    load_model(checkpoint)     the model rebuilt from a checkpoint alone, and its run's options
    load_test(checkpoint)      the same, with the test split its options name
"""
from dataclasses import dataclass

import feature_cache
import methods
import options
import runtime
from checkpoint import load_checkpoint, load_model_state, model_config
from dataset import DataConfig, build_datasets
from losses import TripletLoss
from methods import ModelConfig, build_model
from sketch import MAX_POINTS, MAX_STROKES, SketchStyle
from train import make_optimizer


def data_config(args):
    """The data layer's frozen config from the options: what the method reads (vector sketches,
    GUI trees) follows from --method and --hierarchy."""
    generate = (('seed', args.synthetic_seed), *sorted(dict(args.synthetic_size or []).items()))
    style = SketchStyle(args.sketch_detail, args.line_width, args.merge_gap, args.max_sketch_nodes,
                        getattr(args, 'sketch_whole_box', False), getattr(args, 'max_sketch_strokes', MAX_STROKES),
                        getattr(args, 'max_sketch_points', MAX_POINTS))
    method = getattr(args, 'method', None)
    return DataConfig(dataset=args.dataset, root=args.data_root, num_regions=args.num_regions,
                      image_size=args.image_size, photo_input=args.photo_input or 'rgb',
                      flip_prob=args.flip_prob, style=style, cache=args.image_cache, generate=generate,
                      validation=getattr(args, 'validation', 0.0),
                      points=bool(method) and methods.METHODS[method].cls.needs_points,
                      plans=getattr(args, 'hierarchy', 'learned') == 'explicit')


@dataclass
class Setup:
    train_set: object        # dataset.TripletDataset
    test: object             # dataset.RetrievalData
    model: object            # model.RetrievalModel, on the device
    loss: TripletLoss
    optimizer: object        # torch.optim.Adam (train.make_optimizer)


def setup(args, device, init=None):
    """Seed, then build the datasets (rank 0 first under torchrun: it alone generates the embedded
    dataset or the box cache), the model on `device` (with `init`, a checkpoint dict, its weights:
    --init_from; its frozen stages' feature cache attached with --freeze_backbone), the triplet
    loss and the optimiser that the options describe."""
    runtime.seed_everything(args.seed)
    rank = runtime.world()[0]
    if rank != 0:
        runtime.barrier()
    train_set, test = build_datasets(data_config(args))
    if rank == 0:
        runtime.barrier()
    model = build_model(ModelConfig.from_options(args), args.pretrained, args.freeze_backbone)
    if init is not None:    # --init_from: a new run from a checkpoint's weights (main.py took its model options)
        load_model_state(model, init, args.init_from, args)
    model = model.to(device)
    if args.freeze_backbone:
        feature_cache.attach(model, getattr(args, 'feature_cache', None))
    return Setup(train_set, test, model, TripletLoss.from_options(args), make_optimizer(model, args))


def load_model(checkpoint, overrides=None, device='cpu'):
    """(model in eval mode on `device`, its run's options updated with `overrides` - the data and
    evaluation options typed now -, the checkpoint dict, its path). The model is rebuilt from the
    checkpoint's stored model config alone (checkpoint.model_config)."""
    path, state, args = load_checkpoint(checkpoint, options.parse_args('main', []), overrides)
    model = build_model(model_config(state, path, args))
    load_model_state(model, state, path, model.config)
    return model.to(device).eval(), args, state, path


def load_test(checkpoint, overrides=None, device='cpu'):
    """(model, args, test split, checkpoint dict, path): load_model and the test split of its options."""
    model, args, state, path = load_model(checkpoint, overrides, device)
    _, test = build_datasets(data_config(args))
    return model, args, test, state, path
