"""The pairwise head of the paper: co-attention and one level of node fusion per side, repeated
until each side of a pair is one vector (docs/method.md, sections 3-5). Batched over pairs with
different node counts by masks; `build_head` assembles the paper's, the authors' released and the
ablation heads from the parts in attention.py and hierarchy.py.
"""
import bisect
import itertools
import math

import torch
import torch.nn as nn

from attention import CoAttention
from hierarchy import NodeFusion, drop_and_append, greedy_pairs, iota, merge_layer, sample_gumbel


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

    # Pairs per pass of the evaluation fast path: a pass's working set stays near the CPU's caches
    # (a few MB per tensor at D = 256). On a 2-core CPU 128-256 was best with one thread, 256-512
    # with two (D = 256 and 512); benchmarks/head_speed.py's 'chunks' section measures it.
    eval_chunk = 256

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
        2D with readout 'root+pool'."""
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
        return (*out, rounds) if return_rounds else out

    def _loop(self, s, s_mask, p, p_mask, p_plan=None, levels=None, trace=None, roots=None):
        """The general loop (training, and any head the fast path does not compute). levels: as
        forward; trace: a list that receives, per round, (rows of the pairs that worked or None
        for all, (sketch pairs, photo pairs) long [b, T, 2] merged, -1 where a side did not merge);
        roots: a list that receives the two roots [B, D] before the readout.
        Returns ((s_out, p_out), rounds)."""
        state = [s, s_mask, s_mask.to(s.dtype), p, p_mask, p_mask.to(p.dtype)]   # nodes, mask, leaf counts
        pool = [masked_max(s, s_mask), masked_max(p, p_mask)] if self.readout == 'root+pool' else None
        rounds = torch.zeros(len(s), dtype=torch.long, device=s.device)
        for r in itertools.count():
            active = (state[1].sum(1) > 1) | (state[4].sum(1) > 1)
            if not active.any():
                break
            rounds += active
            # Gumbel noise for every pair at the full width, so that a pair's noise does not
            # depend on which other pairs are still active (tests replay it pair by pair).
            noise = [None, None] if not self.training else \
                [self.gumbel((len(x), x.shape[1], x.shape[1]), x) for x in (state[0], state[3])]
            # A side merges in every round until it is one node, so round r is its merge r.
            forced = None if p_plan is None or r >= p_plan.shape[1] else p_plan[:, r]
            idx = None if active.all() else active.nonzero()[:, 0]      # only the unfinished pairs work
            sub = state if idx is None else [t[idx] for t in state]
            if idx is not None:
                noise = [None if z is None else z[idx] for z in noise]
                forced = None if forced is None else forced[idx]
            new, attended, pairs = self._round(sub, *noise, forced)
            state = new if idx is None else [full.index_copy(0, idx, part) for full, part in zip(state, new)]
            if r == 0 and pool is not None:     # the baseline's readout: max-pool after one co-attention
                first = (masked_max(attended[0], sub[1]), masked_max(attended[1], sub[4]))
                pool = list(first) if idx is None else [x.index_copy(0, idx, y) for x, y in zip(pool, first)]
            if trace is not None:
                trace.append((idx, pairs))
            ns, np_ = int(state[1].sum(1).max()), int(state[4].sum(1).max())
            state = [t[:, :ns] for t in state[:3]] + [t[:, :np_] for t in state[3:]]
            if levels is not None:
                levels.append(tuple(nn.functional.normalize(masked_max(x, m), dim=1)
                                    for x, m in ((state[0], state[1]), (state[3], state[4]))))
        if roots is not None:
            roots += [state[0][:, 0], state[3][:, 0]]
        return self._readout(state[0][:, 0], state[3][:, 0], pool), rounds

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

    # ------------------------------------------------------------ evaluation fast path
    def _loop_eval(self, s, s_mask, p, p_mask):
        """The loop in evaluation mode without autograd: the same rounds and greedy choices as
        `_loop`, with less work per round (numbers: benchmarks/head_speed.py):
          - pairs sorted by (rounds, Ns, Np) and run `eval_chunk` at a time: each pass keeps its
            working set near the CPU's caches, has little padding, and its unfinished pairs are
            always a prefix (a view, no copy); a finished pair's output is written once;
          - the greedy pair as the first maximum of the masked [n, n] compatibility (no candidate
            list, no one-hot), the merge's inputs and the new node order by row indices;
          - the products that are linear in a side's nodes alone (attention projection, the X half
            of the learned gate with its bias) done as ONE matrix product per round, on the nodes
            after fusion ("carried" into the next round's co-attention);
          - the element-wise steps in place and every large intermediate in a workspace reused by
            all rounds and passes (no page faults); padded nodes are not zeroed (nothing real
            reads them).
        """
        b_all, _, d = s.shape
        ns, np_ = s_mask.sum(1), p_mask.sum(1)
        rounds = torch.maximum(ns, np_) - 1
        base = max(s.shape[1], p.shape[1]) + 1
        order = torch.argsort((rounds * base + ns) * base + np_, descending=True, stable=True)
        schedule = torch.stack([rounds, ns, np_], 1)[order].tolist()      # one host copy
        # inference_mode saves a little per operation; its tensors stay inside (_unsort copies out).
        with torch.inference_mode():
            sides = self._eval_sides(_Workspace(s).take)
            s_out, p_out = s.new_empty(b_all, d), p.new_empty(b_all, d)
            for start in range(0, b_all, self.eval_chunk):
                stop = min(start + self.eval_chunk, b_all)
                self._pass_eval(s, p, ns, np_, order[start:stop], schedule[start:stop], sides,
                                s_out[start:stop], p_out[start:stop])
        return self._unsort(order, s_out, p_out), rounds

    def _pass_eval(self, s_all, p_all, ns_all, np_all, idx, schedule, sides, s_out, p_out):
        """The loop for the pairs idx (sorted by rounds, descending; schedule: their host
        [rounds, Ns, Np]); writes their final nodes into s_out, p_out [len(idx), D]."""
        neg = [-r for r, _, _ in schedule]                  # ascending, for bisect
        pre = [(list(itertools.accumulate(v, max)), list(itertools.accumulate(v, min)))
               for v in ([n for _, n, _ in schedule], [n for _, _, n in schedule])]

        def active(r):                                      # pairs still working in round r
            return bisect.bisect_left(neg, -r)

        def widths(side, b, r):                             # (max, min) nodes of the b active pairs
            hi, lo = pre[side]
            return max(hi[b - 1] - r, 1), max(lo[b - 1] - r, 1)

        b = active(0)
        if b < len(idx):                                    # one node per side: no round at all
            s_out[b:], p_out[b:] = s_all[idx[b:], 0], p_all[idx[b:], 0]
        if b == 0:
            return
        keep = idx[:b]
        s, p = s_all[keep, :widths(0, b, 0)[0]].contiguous(), p_all[keep, :widths(1, b, 0)[0]].contiguous()
        s_cnt, p_cnt = ns_all[keep], np_all[keep]
        s_carry, p_carry = sides[0].carry(s), sides[1].carry(p)
        r = 0
        while b:
            (ws, s_min), (wp, p_min) = widths(0, b, r), widths(1, b, r)
            if b < len(s) or ws < s.shape[1] or wp < p.shape[1]:     # some pairs finished
                s, s_cnt, s_carry = _trim(s, s_cnt, s_carry, b, ws)
                p, p_cnt, p_carry = _trim(p, p_cnt, p_carry, b, wp)
            if self.coattention is not None:
                s, p = self.coattention.forward_eval(s, s_carry, _mask(s_cnt, ws, s_min),
                                                     p, p_carry, _mask(p_cnt, wp, p_min), sides[0].take,
                                                     (sides[0].next_buffer(), sides[1].next_buffer()))
                sides[0].flip()
                sides[1].flip()
            s, s_carry = sides[0].fuse(s, s_cnt, s_min)
            p, p_carry = sides[1].fuse(p, p_cnt, p_min)
            s_cnt, p_cnt = (s_cnt - 1).clamp_(min=1), (p_cnt - 1).clamp_(min=1)
            r += 1
            b_next = active(r)
            if b_next < b:                                  # these pairs finished in round r - 1
                s_out[b_next:b], p_out[b_next:b] = s[b_next:b, 0], p[b_next:b, 0]
            b = b_next

    @staticmethod
    def _unsort(order, s_out, p_out):
        """Rows of the sorted outputs back to the caller's order."""
        return tuple(torch.empty_like(x).index_copy_(0, order, x) for x in (s_out, p_out))

    def _eval_sides(self, take):
        carry = [None, None] if self.coattention is None else \
            [self.coattention.eval_carry(side) for side in ('sketch', 'photo')]
        return (_EvalSide('s', self.sketch_fusion, carry[0], take),
                _EvalSide('p', self.photo_fusion, carry[1], take))

    def _round(self, state, s_noise, p_noise, p_forced=None):
        """One round on state [s, s_mask, s_sizes, p, p_mask, p_sizes] -> (the new state, the nodes
        after co-attention (s, p), the pairs merged (s_pairs, p_pairs))."""
        s, s_mask, s_size, p, p_mask, p_size = state
        if self.coattention is not None:
            s, p = self.coattention(s, s_mask, p, p_mask)
        attended = (s, p)
        s, s_mask, s_size, s_pair = _fuse_where_needed(self.sketch_fusion, s, s_mask, s_size, s_noise)
        p, p_mask, p_size, p_pair = _fuse_where_needed(self.photo_fusion, p, p_mask, p_size, p_noise, p_forced)
        if self.round_norm == 'l2':
            s, p = nn.functional.normalize(s, dim=-1), nn.functional.normalize(p, dim=-1)
        return [s, s_mask, s_size, p, p_mask, p_size], attended, (s_pair, p_pair)


def _fuse_where_needed(fusion, x, mask, sizes, noise, forced=None):
    """One fusion level on the rows with more than one node; the width is kept. Returns
    (x, mask, sizes, pairs long [B, T, 2], -1 for the rows that did not merge)."""
    need = mask.sum(1) > 1
    if not need.any():
        return x, mask, sizes, torch.full((len(x), 1, 2), -1, dtype=torch.long, device=x.device)
    idx = need.nonzero()[:, 0]
    y, y_mask, y_sizes, pair = fusion(x[idx], mask[idx], None if noise is None else noise[idx],
                                      None if forced is None else forced[idx], sizes[idx])
    pairs = torch.full((len(x), *pair.shape[1:]), -1, dtype=torch.long, device=x.device)
    y = nn.functional.pad(y, (0, 0, 0, 1))
    y_mask = nn.functional.pad(y_mask, (0, 1))
    y_sizes = nn.functional.pad(y_sizes, (0, 1))
    if len(idx) == len(x):
        return y, y_mask, y_sizes, pair
    return (x.index_copy(0, idx, y), mask.index_copy(0, idx, y_mask), sizes.index_copy(0, idx, y_sizes),
            pairs.index_copy(0, idx, pair))


class _Workspace:
    """Named scratch tensors of the evaluation fast path, reused by every round and pass of a call.
    Fresh tensors of a few MB at every step can cost page faults on a CPU (glibc may hand large
    blocks back to the OS: ~80,000 faults per 512 pairs measured for the released head without
    this; with glibc forced to, the head took 1.6x as long). take(name, shape) -> a contiguous view of buffer
    `name`, grown when too small; a name is only taken again once its last view is dead."""

    def __init__(self, like):
        self.like = like
        self.buffers = {}

    def take(self, name, shape):
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self.buffers[name] = self.like.new_empty(max(n, 1))
        return buf[:n].view(shape)


class _EvalSide:
    """One side ('s' or 'p') of the evaluation fast path: its weights - the compatibility
    projection W_c (None: plain dot product), the merge layer, the E carried projection columns of
    the co-attention (CoAttention.eval_carry; none without co-attention) - and which of its two
    node buffers in the workspace holds the current nodes."""

    def __init__(self, name, fusion, carry, take):
        self.name, self.fusion, self.take = name, fusion, take
        self.comp_w = fusion.eval_proj()
        self.merge = fusion.eval_merge()
        self.carry_w, self.carry_b = carry if carry is not None else (None, None)
        self.current = 0

    def next_buffer(self):
        """The name of the node buffer that does not hold the current nodes; the caller writes the
        side's next nodes there and calls flip()."""
        return f'{self.name}.nodes{1 - self.current}'

    def flip(self):
        self.current = 1 - self.current

    def carry(self, x):
        """[B, n, D] -> [B, n, E] carried projections, or None without co-attention."""
        if self.carry_w is None:
            return None
        b, n, d = x.shape
        out = self.take(f'{self.name}.carry', (b * n, len(self.carry_w)))
        if self.carry_b is None:
            return torch.mm(x.view(b * n, d), self.carry_w.t(), out=out).view(b, n, -1)
        return torch.addmm(self.carry_b, x.view(b * n, d), self.carry_w.t(), out=out).view(b, n, -1)

    def fuse(self, x, counts, min_count):
        """One greedy fusion level on every set with more than one node (M5-M7), and the carried
        projections of the new sets. x: [B, n, D] contiguous, counts: long [B] real nodes,
        min_count: their minimum (a host int). Returns (x' [B, n - 1, D], carry' or None); with
        n = 1 nothing is fused: (x, carry of x)."""
        b, n, d = x.shape
        if n == 1:
            return x, self.carry(x)
        take, name = self.take, self.name
        flat = x.view(b * n, d)
        comp = x
        if self.comp_w is not None:
            comp = torch.mm(flat, self.comp_w.t(), out=take(f'{name}.comp', (b * n, len(self.comp_w))))
            comp = comp.view(b, n, -1)
        c = torch.bmm(comp, comp.transpose(1, 2), out=take(f'{name}.compat', (b, n, n)))
        padded = min_count < n
        a_idx, b_idx = greedy_pairs(c, counts if padded else None)
        if min_count > 1:
            rows = iota(b, x.device)
            slot = (counts - 2) if padded else torch.full_like(counts, n - 2)
            pair = torch.stack([a_idx, b_idx], 1)
        else:                                       # sets with one node keep it, merge nothing
            need = counts > 1
            a_idx, b_idx = a_idx.masked_fill(~need, n), b_idx.masked_fill(~need, n)
            rows = need.nonzero()[:, 0]
            slot = counts[rows] - 2
            pair = torch.stack([a_idx[rows], b_idx[rows]], 1)
        out = take(self.next_buffer(), (b * (n - 1), d))
        x_new = torch.index_select(flat, 0, drop_and_append(n, a_idx, b_idx), out=out)
        self.flip()
        pair = pair.add_((rows * n)[:, None]).view(-1)
        both = torch.index_select(flat, 0, pair, out=take(f'{name}.pair', (len(pair), d))).view(-1, 2 * d)
        if self.merge is None:
            merged = self.fusion.merge(both)
        else:
            linear, relu = self.merge
            merged = torch.addmm(linear.bias, both, linear.weight.t(), out=take(f'{name}.merged', (len(rows), d)))
            if relu:
                merged.relu_()
        x_new.index_copy_(0, slot.add_(rows * (n - 1)), merged)
        x_new = x_new.view(b, n - 1, d)
        return x_new, self.carry(x_new)


def _mean_weights(a, b):
    """Leaf weights {leaf: w} of a node merged as the mean of nodes with weights a and b."""
    out = {}
    for leaf, w in (*a.items(), *b.items()):
        out[leaf] = out.get(leaf, 0.0) + w / 2
    return out


def _mask(counts, width, min_count):
    """bool [B, width] real nodes, or None when no set is padded."""
    if min_count >= width:
        return None
    return iota(width, counts.device) < counts[:, None]


def _trim(x, counts, carry, b, width):
    """The first b sets, cut to `width` slots, contiguous."""
    x = x[:b, :width].contiguous()
    carry = None if carry is None else carry[:b, :width].contiguous()
    return x, counts[:b], carry


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
