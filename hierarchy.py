"""Hierarchical node fusion: one level merges one pair of nodes per node set
(arXiv 2007.15103; docs/method.md, (M5)-(M7)).

Batched over node sets of different sizes: real nodes are a prefix of each row (mask True), and
stay so after the merge, so no Python loop over pairs is needed.
"""
import functools

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


def merge_layer(dim, relu, init='identity'):
    """x_ab = [ReLU](W_F [x_a ; x_b]), W_F: 2D -> D with bias.

    init 'identity': W_F = [I/2, I/2], b = 0, so a merged node starts as the mean of its two
    children and the root as a weighted mean of the leaves (ReLU passes the non-negative region
    features unchanged); 'pytorch': PyTorch's uniform init (the authors' code), under which ~15 rounds of random
    merges scramble the region features and training from scratch barely moves (README,
    'Initialisation of the head').
    """
    if init not in INITS:
        raise ValueError(f'unknown init {init!r}; expected one of {INITS}')
    layer = nn.Linear(2 * dim, dim)
    if init == 'identity':
        with torch.no_grad():
            layer.weight.copy_(torch.cat([torch.eye(dim), torch.eye(dim)], dim=1) / 2)
            layer.bias.zero_()
    return nn.Sequential(layer, nn.ReLU()) if relu else layer


class NodeFusion(nn.Module):
    """Pick one pair (a < b) of nodes and replace it by a merged node appended last.

    compatibility 'projected' (paper): C = (X W_c)(X W_c)^T, W_c: D -> comp_dim, no bias;
    'dot' (authors' code): C = X X^T. The merge layer is injected so that the two branches can
    share one (the authors' code) or own one each (the paper).
    """

    def __init__(self, merge, dim=512, compatibility='projected', comp_dim=128):
        super().__init__()
        if compatibility not in COMPATIBILITIES:
            raise ValueError(f'unknown compatibility {compatibility!r}; expected one of {COMPATIBILITIES}')
        self.proj = nn.Linear(dim, comp_dim, bias=False) if compatibility == 'projected' else None
        self.merge = merge

    def compatibility(self, x):
        """x: [B, N, D] -> C: [B, N, N]"""
        y = x if self.proj is None else self.proj(x)
        return torch.bmm(y, y.transpose(1, 2))

    def forward(self, x, mask, noise=None, forced=None):
        """x: [B, N, D] nodes, mask: bool [B, N] real nodes first, every row with >= 2 of them.
        noise: [B, N, N] Gumbel noise added to C (training: straight-through Gumbel-softmax);
        None picks greedily (evaluation; ties go to the first pair in row-major order).
        forced: long [B, 2], the pair (a < b) to merge instead of choosing (the Explicit
        Hierarchy's tree merges; no gradient reaches the compatibility then).
        Returns (x' [B, N-1, D], mask' [B, N-1]): the other nodes in their old order, then x_ab."""
        b, n, d = x.shape
        counts = mask.sum(1)
        i, j = torch.triu_indices(n, n, 1, device=x.device)            # candidates, row-major
        if forced is not None:      # candidate index of (a, b) in the row-major upper triangle
            a, c = forced[:, 0], forced[:, 1]
            k = a * n - a * (a + 1) // 2 + (c - a - 1)
            choice = F.one_hot(k, len(i)).to(x.dtype)
            return self._merge(x, mask, counts, choice, i, j)
        logits = self.compatibility(x)[:, i, j]                         # [B, K]
        logits = logits.masked_fill(j[None, :] >= counts[:, None], float('-inf'))
        if noise is None:
            choice = F.one_hot(logits.argmax(1), len(i)).to(x.dtype)
        else:
            scores = logits + noise[:, i, j]
            soft = torch.softmax(scores, dim=1)
            hard = F.one_hot(scores.argmax(1), len(i)).to(x.dtype)
            choice = hard - soft.detach() + soft                        # forward hard, backward soft
        return self._merge(x, mask, counts, choice, i, j)

    def _merge(self, x, mask, counts, choice, i, j):
        """Merge the pair `choice` (one-hot [B, K] over the candidates (i, j)) of every row."""
        b, n, d = x.shape
        # The chosen pair's vectors as choice-weighted sums, so the merge sees the gradient path.
        x_a = torch.einsum('bk,kn,bnd->bd', choice, F.one_hot(i, n).to(x.dtype), x)
        x_b = torch.einsum('bk,kn,bnd->bd', choice, F.one_hot(j, n).to(x.dtype), x)
        merged = self.merge(torch.cat([x_a, x_b], dim=1))               # [B, D]

        k = choice.detach().argmax(1)
        pos = torch.arange(n, device=x.device)
        keep = mask & (pos != i[k][:, None]) & (pos != j[k][:, None])
        # Stable order: kept nodes first, in their old order.
        order = torch.argsort((~keep).long() * n + pos, dim=1)[:, :n - 1]
        rest = x.gather(1, order[..., None].expand(-1, -1, d))          # [B, N-1, D]
        new_mask = pos[None, :n - 1] < (counts - 1)[:, None]
        last = pos[None, :n - 1] == (counts - 2)[:, None]
        out = torch.where(last[..., None], merged[:, None, :], rest) * new_mask[..., None]
        return out, new_mask

    # ------------------------------------------------------------ evaluation fast path
    def eval_proj(self):
        """W_c [comp_dim, D] of the projected compatibility, or None for the plain dot product."""
        return None if self.proj is None else self.proj.weight

    def eval_merge(self):
        """(nn.Linear with bias, relu) when the merge layer is one of merge_layer's, else None
        (the fast path then calls the module)."""
        m, relu = self.merge, False
        if (isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.Linear)
                and type(m[1]) is nn.ReLU):
            m, relu = m[0], True
        return (m, relu) if isinstance(m, nn.Linear) and m.bias is not None else None


_IOTA = {}


def iota(n, device):
    """torch.arange(n) (long) on device, as a view of a cached tensor: the evaluation fast path
    needs a few per round and must not write to them."""
    cached = _IOTA.get(device)
    if cached is None or len(cached) < n:
        with torch.inference_mode(False), torch.no_grad():
            cached = _IOTA[device] = torch.arange(max(n, 64), device=device)
    return cached[:n]


@functools.cache
def _not_candidate(n, device):
    """bool [n, n]: True where (i, j) is not a candidate pair (j <= i). Cached; not to be written."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def greedy_pairs(c, counts=None):
    """(M6) at test time without the candidate list: c: [B, n, n] contiguous compatibility (only
    i < j is read; c is overwritten), counts: long [B] real nodes per row, or None when all n are
    real. Returns (a, b), long [B], a < b: the first maximum of C[i, j] over i < j < count in
    row-major order, the pair NodeFusion picks (its candidates are the same pairs in the same
    order). Rows with fewer than 2 nodes get (0, 0)."""
    b, n, _ = c.shape
    skip = _not_candidate(n, c.device)
    if counts is not None:
        skip = skip | (iota(n, c.device) >= counts[:, None, None])
    k = c.masked_fill_(skip, float('-inf')).view(b, n * n).argmax(1)
    return torch.div(k, n, rounding_mode='floor'), k.remainder(n)


def drop_and_append(n, a, b):
    """(M7)'s new order as flat row indices, for node sets stored as the rows of a [B * n, ...]
    tensor: (a, b), long [B], is the pair each set drops (a < b; a = b = n drops nothing).
    Returns long [B * (n - 1)]: output slot t of set k takes row k * n + (the old slot of the
    set's t-th kept node). The merged node's slot (count - 2) and padded slots get some row of
    the same set; the caller overwrites the merged slot."""
    t = iota(n - 1, a.device)
    u = t + (t >= a[:, None])
    src = (u + (u >= b[:, None])).clamp_(max=n - 1)
    return src.add_(iota(len(a), a.device)[:, None] * n).view(-1)
