"""Train the cross-modal hierarchical model with the triplet loss (SPEC section 6).

    python main.py                                  # embedded dataset, light backbone, CPU
    python main.py --dataset ChairV2 --data_root DATA --backbone vgg16   # the paper's set-up

A run folder (--output_dir/--run_name) receives args.json, metrics.jsonl, best.pth (by acc@1),
last.pth, retrieval figures and TensorBoard logs (tb/). --resume RUN continues an interrupted run.
"""
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import options
from dataset import DatasetError, build_datasets, collate
from evaluate import evaluate, figure_queries, resolve_device, retrieval_figure
from model import PretrainedWeightsError, build_model, pair_distance, save_checkpoint, triplet_loss


class EpochSampler(Sampler):
    """A permutation fixed by (seed, epoch), started at `start`: a resumed run sees exactly the
    batches it had not seen yet."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start:].tolist())

    def __len__(self):
        return self.n - self.start


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])


def _pad_nodes(x, width):
    return torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1]) if x.dim() == 3 else (0, width - x.shape[1]))


def train_step(model, batch, optimizer, margin, device, negatives='sampled'):
    """One triplet step (SPEC section 6); returns the loss.

    negatives 'sampled' (the paper): each sketch against its positive and the batch's sampled
    negative photo, 2B pairs through the head. 'batch': each sketch against every photo of the
    batch, B x B pairs, every other photo a negative (B - 1 triplets per sketch instead of one,
    and only B photos to encode); 'batch_hard': the same pairs, one triplet per sketch with its
    closest other photo. With one shared backbone, sketches and photos go through it in
    ONE call, so batch norm normalises them with the same mixed-modality statistics that its
    running averages (used at evaluation) hold.
    """
    b = len(batch['sketch'])
    photo_keys = ('positive', 'negative') if negatives == 'sampled' else ('positive',)
    keys = ('sketch', *photo_keys)
    width = max(batch[f'{k}_mask'].shape[1] for k in keys)
    images = {k: batch[k].to(device) for k in keys}
    boxes = {k: _pad_nodes(batch[f'{k}_boxes'], width).to(device) for k in keys}
    masks = {k: _pad_nodes(batch[f'{k}_mask'], width).to(device) for k in keys}
    if model.sketch_encoder is model.photo_encoder:
        nodes = model.sketch_encoder(*(torch.cat([d[k] for k in keys]) for d in (images, boxes, masks)))
        s, p = nodes[:b], nodes[b:]
    else:
        s = model.sketch_encoder(images['sketch'], boxes['sketch'], masks['sketch'])
        p = model.photo_encoder(*(torch.cat([d[k] for k in photo_keys]) for d in (images, boxes, masks)))
    s_mask, p_mask = masks['sketch'], torch.cat([masks[k] for k in photo_keys])
    ar = torch.arange(b, device=device)
    if negatives == 'sampled':
        si, pj = torch.cat([ar, ar]), torch.cat([ar, ar + b])
    else:
        si, pj = ar.repeat_interleave(b), ar.repeat(b)
    s_out, p_out = model.head(s[si], s_mask[si], p[pj], p_mask[pj])
    dist = pair_distance(s_out, p_out)
    if negatives == 'sampled':
        loss = triplet_loss(dist[:b], dist[b:], margin)
    else:
        dist = dist.view(b, b)
        names = batch['photo_name']
        other = torch.tensor([[x != y for y in names] for x in names], device=device)
        d_pos = dist.diagonal()
        if negatives == 'batch_hard':   # the closest other photo of each sketch
            keep = other.any(1)
            d_neg = dist.masked_fill(~other, float('inf')).amin(1)
            loss = triplet_loss(d_pos[keep], d_neg[keep], margin)
        else:
            loss = triplet_loss(d_pos[:, None].expand(b, b)[other], dist[other], margin)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def learning_rate(args, step, total_steps):
    """The learning rate of optimiser step `step` (0-based): --lr throughout ('constant', the
    paper) or a half-cosine from --lr down to 0 at total_steps ('cosine'). A function of the step
    alone, so a resumed run continues the same curve."""
    if args.lr_schedule == 'cosine':
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return args.lr


def load_resume(path):
    path = Path(path)
    ckpt_path = path / 'last.pth' if path.is_dir() else path
    if not ckpt_path.is_file():
        raise SystemExit(f'error: --resume {path}: no checkpoint at {ckpt_path}')
    return ckpt_path, torch.load(ckpt_path, map_location='cpu', weights_only=False)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = options.parse_args(argv)
    ckpt = None
    if args.resume:
        ckpt_path, ckpt = load_resume(args.resume)
        # The stored options rebuild the same model; what the user typed now (say a larger
        # --max_steps) wins.
        explicit = options.explicit_args(argv)
        vars(args).update({**ckpt['args'], **explicit, 'pretrained': 'none'})
        run_dir = ckpt_path.parent
    else:
        name = args.run_name or time.strftime('%Y%m%d-%H%M%S') + f'_{args.dataset}_{args.backbone}_{args.method}'
        run_dir = Path(args.output_dir) / name
    seed_everything(args.seed)
    device = resolve_device(args.device)
    try:
        train_set, test = build_datasets(args)
        model = build_model(args).to(device)
    except (DatasetError, PretrainedWeightsError) as e:
        raise SystemExit(f'error: {e}')
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    steps_per_epoch = len(train_set) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f'error: {len(train_set)} training sketches, fewer than --batch_size {args.batch_size}')
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    eval_every = args.eval_every or steps_per_epoch
    step, best, last_metrics = 0, -1.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        step, best = ckpt['step'], ckpt['best_acc1']
        set_rng_state(ckpt['rng'])
        print(f'resumed {ckpt_path} at step {step}')
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / 'args.json', 'w') as f:
        json.dump(vars(args), f, indent=1)
    print(f'run folder: {run_dir}\n{len(train_set)} training sketches, {len(test.queries)} test sketches, '
          f'{len(test.gallery)} gallery photos; {total_steps} steps of {args.batch_size} on {device}')

    sampler = EpochSampler(len(train_set), args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=collate, num_workers=args.workers)
    writer = SummaryWriter(run_dir / 'tb', purge_step=step or None)
    shown = figure_queries(len(test.queries), args.figure_queries)

    def checkpoint(file):
        save_checkpoint(run_dir / file, args=vars(args), model=model.state_dict(),
                        optimizer=optimizer.state_dict(), step=step, best_acc1=best,
                        metrics=last_metrics, rng=rng_state())

    def run_evaluation():
        nonlocal best, last_metrics
        t0 = time.time()
        metrics, dist, targets, ranks = evaluate(model, test, args, device)
        last_metrics = dict(metrics, step=step, epoch=step / steps_per_epoch, eval_seconds=time.time() - t0)
        for k in ('acc@1', 'acc@10', 'mean_rank'):
            writer.add_scalar(f'test/{k}', metrics[k], step)
        fig = retrieval_figure(test, dist, targets, ranks, shown)
        fig.save(run_dir / 'retrieval_last.png')
        writer.add_image('test/retrieval', np.asarray(fig), step, dataformats='HWC')
        with open(run_dir / 'metrics.jsonl', 'a') as f:
            f.write(json.dumps(last_metrics) + '\n')
        tqdm.write(f'step {step}: acc@1 {100 * metrics["acc@1"]:.2f}%  acc@10 {100 * metrics["acc@10"]:.2f}%  '
                   f'mean rank {metrics["mean_rank"]:.2f}')
        if metrics['acc@1'] > best:
            best = metrics['acc@1']
            checkpoint('best.pth')
        checkpoint('last.pth')

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc='train', unit='step', dynamic_ncols=True)
    t_start = time.time()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, offset * args.batch_size)
        for batch in loader:
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(args, step, total_steps)
            loss = train_step(model, batch, optimizer, args.margin, device, args.negatives)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f'{loss:.4f}', epoch=epoch,
                            sketches_per_s=f'{bar.format_dict["rate"] * args.batch_size:.1f}'
                            if bar.format_dict.get('rate') else '-')
            writer.add_scalar('train/loss', loss, step)
            writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
            if step % eval_every == 0 or step == total_steps:
                run_evaluation()
            if step >= total_steps:
                break
    bar.close()
    if last_metrics is None or last_metrics['step'] != step:
        run_evaluation()
    writer.close()
    m = last_metrics
    print(f'done in {time.time() - t_start:.0f} s: {args.dataset} test acc@1 {100 * m["acc@1"]:.2f}%  '
          f'acc@10 {100 * m["acc@10"]:.2f}%  (chance acc@1 {100 / len(test.gallery):.2f}%; '
          f'best acc@1 {100 * best:.2f}%)  checkpoints in {run_dir}')
    return m


if __name__ == '__main__':
    main()
