"""Training: the sampler, the learning-rate schedule, one optimiser step, and the loop with its
evaluations and checkpoints. Nothing here knows which method it trains (model.RetrievalModel).

Under torchrun each process takes its share of every global batch of --batch_size triplets (the
same triplets a single process would see, in the same steps); DistributedDataParallel averages
the gradients, rank 0 logs, evaluates and writes checkpoints.
"""
import json
import math
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import feature_cache
import retrieval
import runtime
from backbones import FeatureExtractor
from checkpoint import CheckpointError, load_model_state, model_state, save_checkpoint
from dataset import collate
from model import batch_inputs, modality


class TrainingStopped(Exception):
    """Training cannot go on (a non-finite loss or evaluation); the message says where."""


class EpochSampler(Sampler):
    """Keys (index, item seed) of one epoch: a permutation fixed by (seed, epoch), cut into global
    batches of `batch_size`; this process yields its 1/world share of each batch (as torch's
    DistributedSampler shares an epoch). `set_epoch(epoch, start_step)` starts mid-epoch, so a
    resumed run sees exactly the batches it had not seen; the item seed fixes the item's negative
    and flip whichever process or worker draws it."""

    def __init__(self, n, batch_size, seed, rank=0, world=1):
        if batch_size % world:
            raise ValueError(f'--batch_size {batch_size} is not divisible by the {world} processes')
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self):
        return self.n // self.batch_size

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(2 ** 62, (self.n,), generator=g).tolist()
        share = self.batch_size // self.world
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.batch_size + self.rank * share
            yield from zip(perm[lo:lo + share], seeds[lo:lo + share])

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * (self.batch_size // self.world)


def learning_rate(args, step, total_steps):
    """The learning rate of optimiser step `step` (0-based): --lr throughout ('constant', the
    paper) or a half-cosine from --lr down to 0 at total_steps ('cosine'). A function of the step
    alone, so a resumed run continues the same curve."""
    if args.lr_schedule == 'cosine':
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return args.lr


def make_optimizer(model, args):
    """Adam over two parameter groups: the backbones' (backbones.FeatureExtractor) at --lr and the
    rest (region projection, head, embeddings) at --lr x --head_lr_mult. learning_rate scales both.
    Frozen stages (--freeze_backbone) are not in it."""
    inner = {id(p) for m in model.modules() if isinstance(m, FeatureExtractor) for p in m.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in trained if id(p) in inner], 'lr_mult': 1.0},
              {'params': [p for p in trained if id(p) not in inner], 'lr_mult': args.head_lr_mult}]
    return torch.optim.Adam([g for g in groups if g['params']], lr=args.lr)


def all_finite(value, device):
    """Whether `value` is finite on every process (all must stop together, or DDP hangs)."""
    if runtime.world()[1] == 1:
        return math.isfinite(value)
    ok = torch.tensor(float(math.isfinite(value)), device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def train_step(model, loss_fn, batch, optimizer, device, aux_weight=1.0, amp='none', scaler=None):
    """One triplet step for any method: encode the batch's sketches and the photos the loss needs
    (loss_fn.photo_keys), score loss_fn's pairs, and sum the triplet loss of every distance the
    model trains on (model.training_distances: the pairs, and a first stage weighted by
    aux_weight, the fusion levels averaged). Returns the loss; a non-finite loss raises
    TrainingStopped before the weights change."""
    parts = [(modality(k), batch_inputs(batch, k, device)) for k in ('sketch', *loss_fn.photo_keys)]
    qi, gi = loss_fn.pairs(len(batch['sketch']), device)
    with runtime.autocast(device, amp):
        terms = model(parts, qi, gi)
        loss = sum({'first_stage': aux_weight}.get(name, 1.0) * loss_fn(d.float(), batch['photo_name'])
                   for name, d in terms.items())
    # The backward pass is queued before the step's one host read of the loss, so the host does
    # not wait for the forward pass alone; the weights change only after the check.
    optimizer.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    value = loss.item()
    if not all_finite(value, device):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingStopped(f'non-finite loss ({value})')
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return value


class Trainer:
    """The loop of main.py: steps, evaluations every `eval_every` steps and at the end, best.pth
    (by acc@1, only for a finite, better result) and last.pth, metrics.jsonl, TensorBoard."""

    def __init__(self, args, model, loss_fn, optimizer, train_set, test, run_dir, device, ddp_model=None):
        self.args, self.model, self.loss_fn, self.optimizer = args, model, loss_fn, optimizer
        self.net = ddp_model or model       # what the training step calls (DDP wrapper or model)
        self.test, self.run_dir, self.device = test, run_dir, device
        self.rank, self.world = runtime.world()
        self.sampler = EpochSampler(len(train_set), args.batch_size, args.seed, self.rank, self.world)
        # Its own generator: a loader drawing its base seed from the global one at each epoch would
        # shift the Gumbel noise of a run resumed mid-epoch.
        self.loader = DataLoader(train_set, batch_size=args.batch_size // self.world, sampler=self.sampler,
                                 drop_last=True, collate_fn=collate, num_workers=args.workers,
                                 persistent_workers=args.workers > 0, pin_memory=device.type == 'cuda',
                                 generator=torch.Generator().manual_seed(args.seed))
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = args.max_steps or args.epochs * self.steps_per_epoch
        self.eval_every = args.eval_every or self.steps_per_epoch
        self.step, self.best, self.last_metrics = 0, -1.0, None
        self.scaler = torch.amp.GradScaler(device.type) if args.amp == 'fp16' else None
        self.writer = None
        self.shown = retrieval.figure_queries(len(test.queries), args.figure_queries)

    def restore(self, state):
        load_model_state(self.model, state, self.args.resume, self.args)
        try:
            self.optimizer.load_state_dict(state['optimizer'])
            self.step, self.best = int(state['step']), float(state['best_acc1'])
            self.last_metrics = state.get('metrics')
            if self.scaler is not None and 'scaler' in state:     # fp16: the loss scale it had reached
                self.scaler.load_state_dict(state['scaler'])
            runtime.restore_rng(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f'{self.args.resume}: cannot resume from it, its training state is '
                                  f'incomplete or foreign ({type(e).__name__}: {e})') from None

    def checkpoint(self, file, rng):
        feature_cache.save_all(self.model)
        save_checkpoint(self.run_dir / file, args=vars(self.args), **model_state(self.model),
                        optimizer=self.optimizer.state_dict(), step=self.step, best_acc1=self.best,
                        metrics=self.last_metrics, rng=rng[0], rng_ranks=rng,
                        **({} if self.scaler is None else {'scaler': self.scaler.state_dict()}))

    def evaluate(self):
        t0 = time.time()
        a = self.args
        runtime.broadcast_buffers(self.model)     # every process evaluates rank 0's model
        with runtime.autocast(self.device, a.amp):
            metrics, dist_, targets, ranks = retrieval.evaluate(
                self.model, self.test, self.device, retrieval.EvalConfig.from_options(a), progress=self.rank == 0)
        if metrics['nonfinite']:
            raise TrainingStopped(f'{metrics["nonfinite"]} non-finite distances at the evaluation of step '
                                  f'{self.step} (learning rate {learning_rate(a, self.step - 1, self.total_steps):g}); '
                                  f'training stopped, the checkpoints in {self.run_dir} are those of the last '
                                  f'good evaluation (try a smaller --lr)')
        finite = all(bool(torch.isfinite(v).all()) for v in self.model.state_dict().values() if v.is_floating_point())
        if not all_finite(0.0 if finite else math.inf, self.device):
            raise TrainingStopped(f'non-finite weights after step {self.step}; training stopped, the '
                                  f'checkpoints in {self.run_dir} are those of the last good evaluation')
        rng = runtime.rng_states()
        self.last_metrics = dict(metrics, step=self.step, epoch=self.step / self.steps_per_epoch,
                                 eval_seconds=time.time() - t0)
        if self.rank != 0:
            return
        diagnostics = retrieval.diagnose(self.model, self.test, self.device, a.eval_batch_size)
        if diagnostics:
            self.last_metrics['diagnostics'] = diagnostics
        for k in ('acc@1', 'acc@10', 'mean_rank'):
            self.writer.add_scalar(f'test/{k}', metrics[k], self.step)
        for k, v in diagnostics.items():
            self.writer.add_scalar(f'diagnostics/{k}', v, self.step)
        fig = retrieval.retrieval_figure(self.test, dist_, targets, ranks, self.shown)
        fig.save(self.run_dir / 'retrieval_last.png')
        self.writer.add_image('test/retrieval', np.asarray(fig), self.step, dataformats='HWC')
        with open(self.run_dir / 'metrics.jsonl', 'a') as f:
            f.write(json.dumps(self.last_metrics) + '\n')
        tqdm.write(f'step {self.step}: acc@1 {100 * metrics["acc@1"]:.2f}%  acc@10 {100 * metrics["acc@10"]:.2f}%  '
                   f'mean rank {metrics["mean_rank"]:.2f}  ({self.last_metrics["eval_seconds"]:.0f} s)')
        if metrics['acc@1'] > self.best:
            self.best = metrics['acc@1']
            self.checkpoint('best.pth', rng)
        self.checkpoint('last.pth', rng)

    def run(self):
        """Train to total_steps. Returns the last evaluation's metrics (on every process)."""
        if self.rank == 0:
            self.writer = SummaryWriter(self.run_dir / 'tb', purge_step=self.step or None)
        bar = tqdm(total=self.total_steps, initial=self.step, desc='train', unit='step', dynamic_ncols=True,
                   disable=self.rank != 0)
        self.net.train()
        try:
            while self.step < self.total_steps:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, offset)
                for batch in self.loader:
                    self._one_step(batch, bar, epoch)
                    if self.step % self.eval_every == 0 or self.step == self.total_steps:
                        self.evaluate()
                    if self.step >= self.total_steps:
                        break
            if self.last_metrics is None or self.last_metrics.get('step') != self.step:
                self.evaluate()
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        return self.last_metrics

    def _one_step(self, batch, bar, epoch):
        lr = learning_rate(self.args, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group['lr'] = lr * group.get('lr_mult', 1.0)
        try:
            loss = train_step(self.net, self.loss_fn, batch, self.optimizer, self.device,
                              self.args.aux_weight, self.args.amp, self.scaler)
        except TrainingStopped as e:
            raise TrainingStopped(f'{e} at step {self.step + 1} (learning rate {lr:g}); training stopped, '
                                  f'the checkpoints in {self.run_dir} are those of the last good '
                                  f'evaluation (try a smaller --lr)') from None
        self.step += 1
        bar.update(1)
        rate = bar.format_dict.get('rate')
        bar.set_postfix(loss=f'{loss:.4f}', epoch=epoch,
                        sketches_per_s=f'{rate * self.args.batch_size:.1f}' if rate else '-')
        if self.writer is not None:
            self.writer.add_scalar('train/loss', loss, self.step)
            self.writer.add_scalar('train/lr', lr, self.step)
