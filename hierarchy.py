"""Hierarchical node fusion: one level merges one pair of nodes per node set
(arXiv 2007.15103; docs/method.md, (M5)-(M7)).

Batched over node sets of different sizes: real nodes are a prefix of each row (mask True), and
stay so after the merge, so no Python loop over pairs is needed.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

COMPATIBILITIES = ('projected', 'dot')


def sample_gumbel(shape, like):
    """Standard Gumbel noise of `shape`, on like's device and dtype."""
    u = torch.rand(shape, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    return -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))


INITS = ('identity', 'pytorch')
# How a chosen pair becomes one node (docs/method.md, (M7) and section 9):
#   linear    x_ab = phi(W_F [x_a ; x_b] + b)                      the paper
#   weighted  x_ab = phi(W_F [2a x_a ; 2(1 - a) x_b] + b), a = n_a / (n_a + n_b), n the leaves
#             under a node: at the identity init every root is the mean of its leaves, whatever the tree
#   maxres    x_ab = max(x_a, x_b) + W_F [x_a ; x_b] + b, W_F and b from 0: every root starts as the
#             max-pool of its leaves (B-Localised-Coattn's readout), whatever the tree
MERGES = ('linear', 'weighted', 'maxres')
# Which pair a level merges (M6):
#   gumbel    logits C[i, j]; training: straight-through Gumbel-softmax, test: argmax   the paper
#   scaled    logits = s cos(y_i, y_j), y = X W_c, s learned from 10: the logits start far above the
#             Gumbel noise, so that training trees follow the greedy ones that the test uses
#   balanced  only pairs of the smallest combined leaf count are candidates: every tree is balanced
#             (depth ceil(log2 N)), the same shape in training and test
#   balanced+scaled  both
SELECTIONS = ('gumbel', 'scaled', 'balanced', 'balanced+scaled')
SCALE_INIT = 10.0
# How many pairs a fusion level merges: one (the paper: n - 1 levels), or all: floor(n / 2)
# disjoint pairs, ceil(log2 n) levels (and as many co-attention rounds), picked one after another.
LEVEL_MERGES = ('one', 'all')


def merge_layer(dim, relu, init='identity'):
    """x_ab = [ReLU](W_F [x_a ; x_b]), W_F: 2D -> D with bias.

    init 'identity': W_F = [I/2, I/2], b = 0, so a merged node starts as the mean of its two
    children and the root as a weighted mean of the leaves (ReLU passes non-negative features
    unchanged); 'zero': W_F = 0, b = 0 (the residual of the maxres merge); 'pytorch': PyTorch's
    uniform init (the authors' code), under which ~15 rounds of random merges scramble the region
    features and training from scratch barely moves (docs/method.md, section 8).
    """
    if init not in (*INITS, 'zero'):
        raise ValueError(f'unknown init {init!r}; expected one of {INITS}')
    layer = nn.Linear(2 * dim, dim)
    if init in ('identity', 'zero'):
        with torch.no_grad():
            layer.bias.zero_()
            if init == 'zero':
                layer.weight.zero_()
            else:
                layer.weight.copy_(torch.cat([torch.eye(dim), torch.eye(dim)], dim=1) / 2)
    return nn.Sequential(layer, nn.ReLU()) if relu else layer


class NodeFusion(nn.Module):
    """Pick one pair (a < b) of nodes and replace it by a merged node appended last.

    compatibility 'projected' (paper): C = (X W_c)(X W_c)^T, W_c: D -> comp_dim, no bias;
    'dot' (authors' code): C = X X^T. The merge layer is injected so that the two branches can
    share one (the authors' code) or own one each (the paper); `rule` (MERGES) says how it combines
    the pair, `selection` (SELECTIONS) which pair it gets.

    In training, `agreement` counts the merges whose noisy choice equals the greedy one (a tensor
    [agreed, merges] on the nodes' device, read and reset by the caller; no host sync here).
    """

    def __init__(self, merge, dim=512, compatibility='projected', comp_dim=128, rule='linear',
                 selection='gumbel', level_merges='one'):
        super().__init__()
        if compatibility not in COMPATIBILITIES:
            raise ValueError(f'unknown compatibility {compatibility!r}; expected one of {COMPATIBILITIES}')
        if rule not in MERGES:
            raise ValueError(f'unknown merge {rule!r}; expected one of {MERGES}')
        if selection not in SELECTIONS:
            raise ValueError(f'unknown selection {selection!r}; expected one of {SELECTIONS}')
        if level_merges not in LEVEL_MERGES:
            raise ValueError(f'unknown level_merges {level_merges!r}; expected one of {LEVEL_MERGES}')
        self.level_merges = level_merges
        self.proj = nn.Linear(dim, comp_dim, bias=False) if compatibility == 'projected' else None
        self.merge, self.rule, self.selection = merge, rule, selection
        self.log_scale = nn.Parameter(torch.tensor(math.log(SCALE_INIT))) if 'scaled' in selection else None
        self.agreement = None

    def compatibility(self, x):
        """(M5) x: [B, N, D] -> C: [B, N, N]"""
        y = x if self.proj is None else self.proj(x)
        if self.log_scale is not None:
            y = F.normalize(y, dim=-1)
            return torch.bmm(y, y.transpose(1, 2)) * self.log_scale.exp()
        return torch.bmm(y, y.transpose(1, 2))

    def forward(self, x, mask, noise=None, forced=None, sizes=None, merges=None):
        """x: [B, N, D] nodes, mask: bool [B, N] real nodes first, every row with >= 2 of them.
        noise: [B, N, N] Gumbel noise added to C (training: straight-through Gumbel-softmax);
        None picks greedily (evaluation; ties go to the first pair in row-major order).
        forced: long [B, 2], the pair (a < b) to merge instead of choosing (the Explicit
        Hierarchy's tree merges; no gradient reaches the compatibility then).
        sizes: [B, N] the number of leaves under each node (None: every node a leaf).
        One pair per level (the paper), or with level_merges 'all' floor(n / 2) disjoint pairs,
        picked one after another among the nodes not yet picked (the same rule each time);
        merges: how many picks the widest row needs (a host int, PairHead._schedule), so that no
        pick waits for the device to say whether any row has a pair left (None: found out so).
        Returns (x' [B, N', D], mask' [B, N'], sizes' [B, N'], pairs long [B, T, 2]): the nodes
        not merged in their old order, then the merged ones in the order they were picked;
        `pairs` the (a, b) merged, (-1, -1) where a row had no pair left."""
        b, n, d = x.shape
        counts = mask.sum(1)
        sizes = mask.to(x.dtype) if sizes is None else sizes
        i, j = torch.triu_indices(n, n, 1, device=x.device)            # candidates, row-major
        if forced is not None:      # candidate index of (a, b) in the row-major upper triangle
            a, c = forced[:, 0], forced[:, 1]
            k = a * n - a * (a + 1) // 2 + (c - a - 1)
            return self._merge(x, mask, counts, sizes, [(one_hot(k, len(i), x.dtype), k, None)], i, j)
        compat = self.compatibility(x)[:, i, j]                         # [B, K]
        noise = None if noise is None else noise[:, i, j]
        used = ~mask
        picks = []
        for t in range(1 if self.level_merges == 'one' else n // 2 if merges is None else merges):
            invalid = used[:, i] | used[:, j]
            if self.selection.startswith('balanced'):
                combined = (sizes[:, i] + sizes[:, j]).masked_fill(invalid, float('inf'))
                invalid = invalid | (combined > combined.amin(1, keepdim=True))
            # Every row has a pair at t = 0; later rows may have run out (no host sync at t = 0).
            valid = None if t == 0 else ~invalid.all(1)
            if merges is None and valid is not None and not valid.any():
                break
            logits = compat.masked_fill(invalid, float('-inf'))
            if noise is None:                                           # (M6): greedy at test
                pick = logits.argmax(1)
                choice = one_hot(pick, len(i), x.dtype)
            else:
                scores = logits + noise
                soft = torch.softmax(scores, dim=1)
                pick = scores.argmax(1)
                hard = one_hot(pick, len(i), x.dtype)
                choice = hard - soft.detach() + soft                    # (M6): forward hard, backward soft
                agreed = pick == logits.detach().argmax(1)
                step = torch.stack([agreed.sum(), agreed.new_full((), b, dtype=torch.long)] if valid is None else
                                   [(agreed & valid).sum(), valid.sum()]).to(torch.float64)
                self.agreement = step if self.agreement is None else self.agreement + step
            if valid is not None:       # rows without a pair: nothing chosen (and no NaN from the softmax)
                choice = torch.where(valid[:, None], choice, 0)
            picks.append((choice, pick, valid))
            hit = one_hot(i[pick], n, torch.bool) | one_hot(j[pick], n, torch.bool)
            used = used | (hit if valid is None else hit & valid[:, None])
        return self._merge(x, mask, counts, sizes, picks, i, j)

    def _merge(self, x, mask, counts, sizes, picks, i, j):
        """Merge the picked pairs of every row: picks = [(choice one-hot [B, K] over the candidates
        (i, j), pick long [B], valid bool [B] or None for all rows)], disjoint pairs."""
        b, n, d = x.shape
        pos = torch.arange(n, device=x.device)
        pick_a, pick_b = one_hot(i, n, x.dtype), one_hot(j, n, x.dtype)
        merged, merged_sizes, pairs, drop = [], [], [], torch.zeros_like(mask)
        for choice, k, valid in picks:
            # The chosen pair's vectors as choice-weighted sums, so the merge sees the gradient path.
            x_a = torch.einsum('bk,kn,bnd->bd', choice, pick_a, x)
            x_b = torch.einsum('bk,kn,bnd->bd', choice, pick_b, x)
            n_a, n_b = sizes.gather(1, i[k][:, None]), sizes.gather(1, j[k][:, None])    # [B, 1]
            if self.rule == 'weighted':
                alpha = n_a / (n_a + n_b)
                merged.append(self.merge(torch.cat([2 * alpha * x_a, 2 * (1 - alpha) * x_b], dim=1)))
            elif self.rule == 'maxres':
                merged.append(torch.maximum(x_a, x_b) + self.merge(torch.cat([x_a, x_b], dim=1)))
            else:
                merged.append(self.merge(torch.cat([x_a, x_b], dim=1)))            # (M7) [B, D]
            ok = torch.ones_like(counts, dtype=torch.bool) if valid is None else valid
            merged_sizes.append(n_a[:, 0] + n_b[:, 0])
            pairs.append(torch.stack([i[k], j[k]], 1).masked_fill(~ok[:, None], -1))
            drop = drop | (((pos == i[k][:, None]) | (pos == j[k][:, None])) & ok[:, None])
        ok = torch.stack([p[:, 0] >= 0 for p in pairs], 1)                           # [B, T]
        keep = mask & ~drop
        # New order: kept nodes in their old order, then the merged ones in pick order.
        big = n + len(picks)
        key = torch.cat([torch.where(keep, pos, big), torch.where(ok, n + torch.arange(len(picks), device=x.device), big)], 1)
        width = n - 1
        order = torch.argsort(key, dim=1)[:, :width]
        new_count = counts - ok.sum(1)
        new_mask = pos[None, :width] < new_count[:, None]
        out = torch.cat([x, torch.stack(merged, 1)], 1).gather(1, order[..., None].expand(-1, -1, d))
        new_sizes = torch.cat([sizes, torch.stack(merged_sizes, 1)], 1).gather(1, order)
        return out * new_mask[..., None], new_mask, new_sizes * new_mask, torch.stack(pairs, 1)


def one_hot(idx, n, dtype):
    """idx: long [...] -> [..., n] of dtype; F.one_hot without its range check, which on a CPU
    reads min and max back to the host (its CUDA kernel does not; this keeps both alike)."""
    return (idx[..., None] == torch.arange(n, device=idx.device)).to(dtype)
