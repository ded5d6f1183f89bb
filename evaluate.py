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
from checkpoint import CheckpointError
from experiment import load_model, load_test
from files import DatasetError, WriteError, describe_os_error
from search import search

# The options of this program that are not the run's (data and evaluation options override those).
OWN_OPTIONS = {a.dest for a in options.evaluate_part()._actions}


def drop_inapplicable_rerank(model, args):
    """--rerank M needs a first stage (--first_stage_dim); without one, say so and rank the whole
    gallery by the model's distances."""
    if args.rerank and not retrieval.reranks(model, args.rerank):
        print(f'note: --rerank {args.rerank} does not apply: this {args.method} model has no first stage '
              f'(--first_stage_dim), so the whole gallery is ranked by its distances')
        args.rerank = 0


def evaluate_split(checkpoint, overrides, device):
    model, args, test, state, path = load_test(checkpoint, overrides, device)
    drop_inapplicable_rerank(model, args)
    metrics, dist, targets, ranks = retrieval.evaluate(model, test, device, retrieval.EvalConfig.from_options(args))
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
    overrides = {k: v for k, v in explicit.items() if k not in OWN_OPTIONS}
    problem = runtime.check_amp(typed.amp, device)
    if problem:
        raise SystemExit(f'error: {problem}')
    try:
        with runtime.autocast(device, typed.amp):
            if not (typed.query or typed.onthefly):
                return evaluate_split(typed.checkpoint, overrides, device)
            model, args, state, path = load_model(typed.checkpoint, overrides, device)
            drop_inapplicable_rerank(model, args)
            if typed.query:
                return search(model, args, path, typed.query, typed.gallery, typed.topk, device)
            return onthefly.evaluate_checkpoint(model, args, state, path, device, typed.out, typed.onthefly_sketches)
    except (DatasetError, PretrainedWeightsError, CheckpointError, WriteError) as e:
        raise SystemExit(f'error: {e}') from None
    except OSError as e:   # writing the figure or the metrics: full disk, read-only folder
        raise SystemExit(f'error: {e.filename or typed.checkpoint}: {describe_os_error(e)}') from None


if __name__ == '__main__':
    main()
