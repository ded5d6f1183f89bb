"""Evaluate a checkpoint on a test split, or search a gallery with one sketch.

    python evaluate.py --checkpoint runs/RUN/best.pth [--sketch_detail coarse] [--rerank 20]
    python evaluate.py --checkpoint runs/RUN/best.pth --query SKETCH [--gallery PHOTO_DIR] [--topk 10]
    python evaluate.py --checkpoint runs/RUN/best.pth --onthefly [--out DIR]   # after every stroke (onthefly.py)

The model is rebuilt from the checkpoint alone; data and evaluation options typed here override
the stored ones. SKETCH is a raster sketch image, a vector sketch .npy (L, 3) on the 256 canvas,
or a test sketch key of the checkpoint's dataset. A --gallery folder is indexed once (region
features and first-stage embeddings, float16, tied to the checkpoint and the options) and the
index is reused while it matches.
"""
import json
import sys

import onthefly
import options
import retrieval
import runtime
from backbones import PretrainedWeightsError
from checkpoint import CheckpointError, load_checkpoint, load_model_state
from dataset import build_datasets
from files import DatasetError, WriteError, describe_os_error
from methods import build_model
from search import search


def load_model(checkpoint, overrides, device):
    """(model in eval mode, its options, the checkpoint dict, its path)."""
    defaults = options.parse_args('main', [])
    path, state, args = load_checkpoint(checkpoint, defaults, overrides)
    model = build_model(args)
    load_model_state(model, state, path, args)
    return model.to(device).eval(), args, state, path


def evaluate_split(model, args, state, path, device):
    _, test = build_datasets(options.data_config(args))
    metrics, dist, targets, ranks = retrieval.evaluate(model, test, device, args.eval_batch_size, args.workers,
                                                       args.pair_chunk, args.rerank)
    metrics.update(queries=len(test.queries), gallery=len(test.gallery), sketch_detail=args.sketch_detail,
                   rerank=args.rerank, checkpoint=str(path), step=state.get('step'))
    suffix = ('' if args.sketch_detail == 'full' else f'_{args.sketch_detail}')
    suffix += f'_rerank{args.rerank}' if args.rerank else ''
    fig_path = path.with_name(f'retrieval_{path.stem}{suffix}.png')
    retrieval.retrieval_figure(test, dist, targets, ranks,
                               retrieval.figure_queries(len(test.queries), args.figure_queries)).save(fig_path)
    print(f'{args.dataset} test ({len(test.queries)} sketches, {len(test.gallery)} photos, sketch detail '
          f'{args.sketch_detail}{f", rerank {args.rerank}" if args.rerank else ""}): acc@1 '
          f'{100 * metrics["acc@1"]:.2f}%  acc@10 {100 * metrics["acc@10"]:.2f}%  mean rank {metrics["mean_rank"]:.2f}')
    if metrics['nonfinite']:
        print(f'warning: {metrics["nonfinite"]} non-finite distances (a diverged model?); they rank last')
    print(f'retrieval figure: {fig_path}')
    (path.with_name(f'eval_{path.stem}{suffix}.json')).write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    explicit = options.explicit_args('evaluate', argv)
    typed = options.parse_args('evaluate', argv)
    device = runtime.resolve_device(typed.device)
    overrides = {k: v for k, v in explicit.items()
                 if k not in ('checkpoint', 'device', 'query', 'gallery', 'topk', 'onthefly', 'out',
                              'onthefly_sketches')}
    try:
        model, args, state, path = load_model(typed.checkpoint, overrides, device)
        if typed.query:
            return search(model, args, path, typed.query, typed.gallery, typed.topk, device)
        if typed.onthefly:
            return onthefly.evaluate_checkpoint(model, args, state, path, device, typed.out, typed.onthefly_sketches)
        return evaluate_split(model, args, state, path, device)
    except (DatasetError, PretrainedWeightsError, CheckpointError, WriteError) as e:
        raise SystemExit(f'error: {e}') from None
    except OSError as e:   # writing the figure or the metrics: full disk, read-only folder
        raise SystemExit(f'error: {e.filename or typed.checkpoint}: {describe_os_error(e)}') from None


if __name__ == '__main__':
    main()
