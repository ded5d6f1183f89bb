"""The pairwise head of the paper: co-attention and one level of node fusion per side, repeated
until each side of a pair is one vector (docs/method.md, sections 3-5). Batched over pairs with
different node counts by masks; `build_head` assembles the paper's, the authors' released and the
ablation heads from the parts in attention.py and hierarchy.py.
"""
import math

import torch
import torch.nn as nn

import fast_eval
from attention import CoAttention
from hierarchy import NodeFusion, merge_layer, sample_gumbel


class PairHead(nn.Module):
    """The loop of the paper (docs/method.md, section 5) for a batch of (sketch, photo) pairs with different node
    counts (docs/method.md, 'The loop').

    While either side of a pair has more than one node: co-attention on the pair, then one fusion
    level in each side that still has more than one node; max(Ns, Np) - 1 rounds in all. The last
    node of each side is the pair's embedding. Parts are injected:
      coattention: CoAttention or None (the 'w/o Localised-Coattn' ablation);
      sketch_fusion, photo_fusion: NodeFusion, or both None for B-Localised-Coattn (one
        co-attention round, masked max-pool, L2 - the 'w/o Hierarchy' ablation).
    Training mode draws straight-through Gumbel noise from `gumbel(shape, like)`; eval is greedy.
    """

    # Pairs per pass of the evaluation fast path; None: eval_pairs(device, ...) (256 on a CPU).
    eval_chunk = None

    def __init__(self, coattention, sketch_fusion, photo_fusion, gumbel=sample_gumbel, readout='root',
                 round_norm='none'):
        super().__init__()
        if (sketch_fusion is None) != (photo_fusion is None):
            raise ValueError('give both fusion modules or neither')
        if coattention is None and sketch_fusion is None:
            raise ValueError('a head needs co-attention, fusion, or both')
        if readout not in READOUTS:
            raise ValueError(f'unknown readout {readout!r}; expected one of {READOUTS}')
        if round_norm not in ROUND_NORMS:
            raise ValueError(f'unknown round_norm {round_norm!r}; expected one of {ROUND_NORMS}')
        self.coattention = coattention
        self.sketch_fusion = sketch_fusion
        self.photo_fusion = photo_fusion
        self.gumbel = gumbel
        self.readout, self.round_norm = readout, round_norm

    @property
    def fast_eval(self):
        """Whether the evaluation fast path computes this head (the paper's and the released heads:
        linear merges, greedy selection on the raw compatibility, the root as the embedding)."""
        fusions = (self.sketch_fusion, self.photo_fusion)
        return (self.readout == 'root' and self.round_norm == 'none'
                and all(f.rule == 'linear' and f.selection == 'gumbel' and f.level_merges == 'one'
                        for f in fusions))

    def forward(self, s, s_mask, p, p_mask, return_rounds=False, p_plan=None, levels=None):
        """s: [B, Ns, D] sketch nodes, s_mask: bool [B, Ns] (True = real node, real nodes first,
        at least one); p: [B, Np, D], p_mask: bool [B, Np] likewise. p_plan: long [B, Np - 1, 2],
        the photo side's merges round by round instead of learned ones (the Explicit Hierarchy,
        layouts.merge_plan; the general loop runs then). levels: a list that receives, after
        every round, each side's L2 max-pool of its nodes ([B, D], [B, D]) (the level loss).
        Returns (s_out [B, E], p_out [B, E]) and, with return_rounds, rounds: long [B]; E = D, or
        2D with readout 'root+pool'.

        The head runs in float32 with autocast off, whatever the caller's precision (--amp): its
        selection (argmax of logits + Gumbel noise), the residual stream over ~15 rounds and the
        compatibility of raw 512-d nodes need float32 (bf16 has 256 levels; fp16 overflows at
        65504), and its small matrix products are bound by launches, not by arithmetic."""
        with torch.autocast(s.device.type, enabled=False):
            out, rounds = self._forward(full_precision(s), s_mask, full_precision(p), p_mask, p_plan, levels)
        return (*out, rounds) if return_rounds else out

    def _forward(self, s, s_mask, p, p_mask, p_plan, levels):
        if self.sketch_fusion is None:
            s, p = self.coattention(s, s_mask, p, p_mask)
            out = (masked_max(s, s_mask), masked_max(p, p_mask))
            out = tuple(nn.functional.normalize(x, dim=1) for x in out)
            rounds = torch.ones(len(s), dtype=torch.long, device=s.device)
            if levels is not None:
                levels.append(out)
        elif (not self.training and not torch.is_grad_enabled() and p_plan is None and levels is None
              and self.fast_eval):
            out, rounds = self._loop_eval(s, s_mask, p, p_mask)
        else:
            out, rounds = self._loop(s, s_mask, p, p_mask, p_plan, levels)
        return out, rounds

    def _loop(self, s, s_mask, p, p_mask, p_plan=None, levels=None, trace=None, roots=None):
        """The general loop (training, and any head the fast path does not compute). levels: as
        forward; trace: a list that receives, per round, (rows of the pairs that worked or None
        for all, (sketch pairs, photo pairs) long [b, T, 2] merged, -1 where a side did not merge);
        roots: a list that receives the two roots [B, D] before the readout.
        Which pairs and sides work in each round follows from the node counts alone, so it is
        planned once on the host (`_schedule`: one read of the counts, one copy of the row
        indices to the device) and the rounds themselves never wait for the device.
        Returns ((s_out, p_out), rounds)."""
        plan = self._schedule(s_mask, p_mask, p_plan is not None)
        state = [s, s_mask, s_mask.to(s.dtype), p, p_mask, p_mask.to(p.dtype)]   # nodes, mask, leaf counts
        pool = [masked_max(s, s_mask), masked_max(p, p_mask)] if self.readout == 'root+pool' else None
        for r, (idx, s_need, p_need, merges, (ns, np_)) in enumerate(plan.rounds):
            # Gumbel noise for every pair at the full width, so that a pair's noise does not
            # depend on which other pairs are still active (tests replay it pair by pair).
            noise = [None, None] if not self.training else \
                [self.gumbel((len(x), x.shape[1], x.shape[1]), x) for x in (state[0], state[3])]
            # A side merges in every round until it is one node, so round r is its merge r.
            forced = None if p_plan is None or r >= p_plan.shape[1] else p_plan[:, r]
            sub = state if idx is None else [t[idx] for t in state]      # only the unfinished pairs work
            if idx is not None:
                noise = [None if z is None else z[idx] for z in noise]
                forced = None if forced is None else forced[idx]
            new, attended, pairs = self._round(sub, *noise, forced, (s_need, p_need), merges)
            state = new if idx is None else [full.index_copy(0, idx, part) for full, part in zip(state, new)]
            if r == 0 and pool is not None:     # the baseline's readout: max-pool after one co-attention
                first = (masked_max(attended[0], sub[1]), masked_max(attended[1], sub[4]))
                pool = list(first) if idx is None else [x.index_copy(0, idx, y) for x, y in zip(pool, first)]
            if trace is not None:
                trace.append((idx, pairs))
            state = [t[:, :ns] for t in state[:3]] + [t[:, :np_] for t in state[3:]]
            if levels is not None:
                levels.append(tuple(nn.functional.normalize(masked_max(x, m), dim=1)
                                    for x, m in ((state[0], state[1]), (state[3], state[4]))))
        if roots is not None:
            roots += [state[0][:, 0], state[3][:, 0]]
        return self._readout(state[0][:, 0], state[3][:, 0], pool), plan.count

    def _schedule(self, s_mask, p_mask, forced):
        """The loop's rounds planned on the host from the node counts (one host read): a side with
        c > 1 nodes merges one pair per round (c // 2 with level_merges 'all'; the forced merges
        of --hierarchy explicit: one), until both sides of a pair are one node. Returns a
        _Schedule: rounds, per round (rows of the pairs still working or None for all, rows of
        those among them whose sketch side merges or None for all, the same for the photo side,
        the picks per level (s, p), the state's widths after it (ns, np)); count, long [B] the
        rounds of each pair. Row lists are views of one tensor copied to the device once."""
        counts = torch.stack([s_mask.sum(1), p_mask.sum(1)]).tolist()
        halve = [f.level_merges == 'all' for f in (self.sketch_fusion, self.photo_fusion)]
        halve[1] = halve[1] and not forced
        flat, rounds, count = [], [], [0] * len(counts[0])

        def rows(sel, of):              # None when sel is every row of `of`
            if len(sel) == len(of):
                return None
            flat.extend(sel)
            return (len(flat) - len(sel), len(sel))
        while True:
            active = [k for k in range(len(count)) if counts[0][k] > 1 or counts[1][k] > 1]
            if not active:
                break
            need = [[j for j, k in enumerate(active) if c[k] > 1] for c in counts]
            merges = tuple(max((c[k] // 2 if h else 1) for k in active if c[k] > 1) if n else 0
                           for c, h, n in zip(counts, halve, need))
            for k in active:
                count[k] += 1
            for c, h in zip(counts, halve):
                for k in active:
                    c[k] = c[k] - (c[k] // 2 if h else 1) if c[k] > 1 else c[k]
            rounds.append((rows(active, count), *(rows(n, active) if n else () for n in need), merges,
                           (max(counts[0]), max(counts[1]))))
        flat.extend(count)
        packed = torch.tensor(flat, dtype=torch.long)
        if s_mask.device.type == 'cuda':
            packed = packed.pin_memory()
        packed = packed.to(s_mask.device, non_blocking=True)

        def view(sel):
            return sel if sel is None or sel == () else packed[sel[0]:sel[0] + sel[1]]
        return _Schedule([(view(i), view(s), view(p), m, w) for i, s, p, m, w in rounds],
                         packed[len(flat) - len(count):])

    def _readout(self, s_root, p_root, pool):
        """The pair embedding: the roots [B, D] (readout 'root', the paper), or [L2 root ; L2
        max-pool after the first co-attention] [B, 2D] ('root+pool')."""
        if pool is None:
            return s_root, p_root
        norm = nn.functional.normalize
        return (torch.cat([norm(s_root, dim=1), norm(pool[0], dim=1)], 1),
                torch.cat([norm(p_root, dim=1), norm(pool[1], dim=1)], 1))

    @torch.no_grad()
    def trees(self, s, s_mask, p, p_mask):
        """What the greedy trees of a batch of pairs look like (the head in eval mode): per side,
        the mean over pairs of the effective number of leaves 1 / sum(w^2), w = each leaf's weight
        in the root if every merge were the mean of its two children (2^-depth: how balanced the
        tree is, whatever the merge rule), of the tree's depth, and of the root's norm before the
        readout. Returns a dict of floats."""
        if self.sketch_fusion is None:
            return {}
        was = self.training
        self.eval()
        trace, roots = [], []
        try:
            self._loop(s, s_mask, p, p_mask, trace=trace, roots=roots)
        finally:
            self.train(was)
        out = {}
        for side, (mask, k) in {'sketch': (s_mask, 0), 'photo': (p_mask, 1)}.items():
            counts = mask.sum(1).tolist()
            nodes = [[{leaf: 1.0} for leaf in range(c)] for c in counts]
            for idx, pairs in trace:
                rows = range(len(counts)) if idx is None else idx.tolist()
                for row, level in zip(rows, pairs[k].tolist()):
                    level = [(a, b) for a, b in level if a >= 0]
                    if not level:
                        continue
                    done = {t for pair in level for t in pair}
                    merged = [_mean_weights(nodes[row][a], nodes[row][b]) for a, b in level]
                    nodes[row] = [x for t, x in enumerate(nodes[row]) if t not in done] + merged
            weights = [list(n[0].values()) for n in nodes]
            out[f'{side}_leaves'] = sum(len(w) for w in weights) / len(weights)
            out[f'{side}_effective_leaves'] = sum(1 / sum(x * x for x in w) for w in weights) / len(weights)
            out[f'{side}_depth'] = sum(-math.log2(min(w)) for w in weights) / len(weights)
            out[f'{side}_root_norm'] = roots[k].norm(dim=1).mean().item()
        return out

    def merge_agreement(self):
        """The fraction of training merges since the last call whose Gumbel choice was the greedy
        one, per side ({} when none were made); resets the counts."""
        out = {}
        for side, fusion in (('sketch', self.sketch_fusion), ('photo', self.photo_fusion)):
            if fusion is not None and fusion.agreement is not None:
                agreed, total = fusion.agreement.tolist()
                out[f'{side}_greedy_merges'] = agreed / max(total, 1)
                fusion.agreement = None
        return out

    def _loop_eval(self, s, s_mask, p, p_mask):
        """The loop in evaluation mode without autograd (fast_eval.loop)."""
        return fast_eval.loop(self, s, s_mask, p, p_mask)

    def _round(self, state, s_noise, p_noise, p_forced, need, merges):
        """One round on state [s, s_mask, s_sizes, p, p_mask, p_sizes] -> (the new state, the nodes
        after co-attention (s, p), the pairs merged (s_pairs, p_pairs)). need, merges: per side,
        the rows that merge and the picks per level (_schedule)."""
        s, s_mask, s_size, p, p_mask, p_size = state
        if self.coattention is not None:
            s, p = self.coattention(s, s_mask, p, p_mask)
        attended = (s, p)
        s, s_mask, s_size, s_pair = _fuse_where_needed(self.sketch_fusion, s, s_mask, s_size, s_noise,
                                                       None, need[0], merges[0])
        p, p_mask, p_size, p_pair = _fuse_where_needed(self.photo_fusion, p, p_mask, p_size, p_noise, p_forced,
                                                       need[1], merges[1])
        if self.round_norm == 'l2':
            s, p = nn.functional.normalize(s, dim=-1), nn.functional.normalize(p, dim=-1)
        return [s, s_mask, s_size, p, p_mask, p_size], attended, (s_pair, p_pair)


def _fuse_where_needed(fusion, x, mask, sizes, noise, forced, need, merges):
    """One fusion level on the rows `need` (long [b]; None: every row; (): none), which have more
    than one node; the width is kept. merges: picks per level (host int). Returns (x, mask,
    sizes, pairs long [B, T, 2], -1 for the rows that did not merge)."""
    if isinstance(need, tuple):
        return x, mask, sizes, torch.full((len(x), 1, 2), -1, dtype=torch.long, device=x.device)
    sel = (lambda t: t) if need is None else (lambda t: t[need])
    y, y_mask, y_sizes, pair = fusion(sel(x), sel(mask), None if noise is None else sel(noise),
                                      None if forced is None else sel(forced), sel(sizes), merges)
    y = nn.functional.pad(y, (0, 0, 0, 1))
    y_mask = nn.functional.pad(y_mask, (0, 1))
    y_sizes = nn.functional.pad(y_sizes, (0, 1))
    if need is None:
        return y, y_mask, y_sizes, pair
    pairs = torch.full((len(x), *pair.shape[1:]), -1, dtype=torch.long, device=x.device)
    return (x.index_copy(0, need, y), mask.index_copy(0, need, y_mask), sizes.index_copy(0, need, y_sizes),
            pairs.index_copy(0, need, pair))


class _Schedule:
    """PairHead._schedule's plan: rounds (a list) and count (long [B], rounds per pair)."""

    def __init__(self, rounds, count):
        self.rounds, self.count = rounds, count


def _mean_weights(a, b):
    """Leaf weights {leaf: w} of a node merged as the mean of nodes with weights a and b."""
    out = {}
    for leaf, w in (*a.items(), *b.items()):
        out[leaf] = out.get(leaf, 0.0) + w / 2
    return out


def masked_max(x, mask):
    """x: [B, N, D], mask: bool [B, N] -> [B, D] max over the real nodes."""
    return x.masked_fill(~mask[..., None], float('-inf')).amax(dim=1)


VARIANTS = {
    # gate, compatibility, ReLU after merge, one merge layer shared by both branches
    'paper': dict(gate='learned', compatibility='projected', relu=True, shared_merge=False),
    'released': dict(gate='product', compatibility='dot', relu=False, shared_merge=True),
}
READOUTS = ('root', 'root+pool')
ROUND_NORMS = ('none', 'l2')
MERGE_ACTS = ('relu', 'none')


def build_head(variant='paper', dim=512, att_dim=128, init='identity', merge='linear', merge_act=None,
               selection='gumbel', readout='root', round_norm='none', level_merges='one', coattention=True,
               fusion=True, gate=None):
    """The pairwise head. variant: 'paper' or 'released' (the authors' pre-Sep-2020 code);
    the layout a method's row gives (methods.py): coattention / fusion (False: no co-attention,
    no node fusion: one round, then the readout), gate (None: the variant's);
    init: 'identity' (merges start as means, co-attention updates start small; ours, the paper
    does not say) or 'pytorch' (PyTorch's, as the authors' code). The departures of
    docs/method.md, section 9: merge (hierarchy.MERGES), merge_act ('relu' | 'none'; None: the
    variant's), selection (hierarchy.SELECTIONS), readout (READOUTS), round_norm (ROUND_NORMS),
    level_merges (hierarchy.LEVEL_MERGES)."""
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}; expected one of {sorted(VARIANTS)}')
    v = VARIANTS[variant]
    gate = gate or v['gate']
    if not fusion:
        return PairHead(CoAttention(dim, att_dim, gate, init), None, None)
    if merge_act not in (None, *MERGE_ACTS):
        raise ValueError(f'unknown merge_act {merge_act!r}; expected one of {MERGE_ACTS}')
    relu = v['relu'] if merge_act is None else merge_act == 'relu'
    coattention = CoAttention(dim, att_dim, gate, init) if coattention else None
    # maxres: the residual W_F [x_a ; x_b] + b starts at 0 and has no activation.
    layer_init, relu = ('zero', False) if merge == 'maxres' else (init, relu)
    merge_s = merge_layer(dim, relu, layer_init)
    merge_p = merge_s if v['shared_merge'] else merge_layer(dim, relu, layer_init)
    return PairHead(coattention,
                    NodeFusion(merge_s, dim, v['compatibility'], att_dim, merge, selection, level_merges),
                    NodeFusion(merge_p, dim, v['compatibility'], att_dim, merge, selection, level_merges),
                    readout=readout, round_norm=round_norm)


def full_precision(x):
    """x in float32 unless it is float32 or float64 already (the references run in float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
