"""The pairwise head of the paper: co-attention and one level of node fusion per side, repeated
until each side of a pair is one vector (docs/method.md, sections 3-5). Batched over pairs with
different node counts by masks; `build_head` assembles the paper's, the authors' released and the
ablation heads from the parts in attention.py and hierarchy.py.
"""
import torch
import torch.nn as nn

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

    def __init__(self, coattention, sketch_fusion, photo_fusion, gumbel=sample_gumbel):
        super().__init__()
        if (sketch_fusion is None) != (photo_fusion is None):
            raise ValueError('give both fusion modules or neither')
        if coattention is None and sketch_fusion is None:
            raise ValueError('a head needs co-attention, fusion, or both')
        self.coattention = coattention
        self.sketch_fusion = sketch_fusion
        self.photo_fusion = photo_fusion
        self.gumbel = gumbel

    def forward(self, s, s_mask, p, p_mask, return_rounds=False):
        """s: [B, Ns, D] sketch nodes, s_mask: bool [B, Ns] (True = real node, real nodes first,
        at least one); p: [B, Np, D], p_mask: bool [B, Np] likewise.
        Returns (s_out [B, D], p_out [B, D]) and, with return_rounds, rounds: long [B]."""
        if self.sketch_fusion is None:
            s, p = self.coattention(s, s_mask, p, p_mask)
            out = (masked_max(s, s_mask), masked_max(p, p_mask))
            out = tuple(nn.functional.normalize(x, dim=1) for x in out)
            rounds = torch.ones(len(s), dtype=torch.long, device=s.device)
        else:
            out, rounds = self._loop(s, s_mask, p, p_mask)
        return (*out, rounds) if return_rounds else out

    def _loop(self, s, s_mask, p, p_mask):
        rounds = torch.zeros(len(s), dtype=torch.long, device=s.device)
        while True:
            active = (s_mask.sum(1) > 1) | (p_mask.sum(1) > 1)
            if not active.any():
                break
            rounds += active
            # Gumbel noise for every pair at the full width, so that a pair's noise does not
            # depend on which other pairs are still active (tests replay it pair by pair).
            noise = [None, None] if not self.training else \
                [self.gumbel((len(x), x.shape[1], x.shape[1]), x) for x in (s, p)]
            if active.all():
                s, s_mask, p, p_mask = self._round(s, s_mask, p, p_mask, *noise)
            else:  # only the unfinished pairs do work
                idx = active.nonzero()[:, 0]
                sub = self._round(s[idx], s_mask[idx], p[idx], p_mask[idx],
                                  *[None if z is None else z[idx] for z in noise])
                s, s_mask, p, p_mask = (full.index_copy(0, idx, part)
                                        for full, part in zip((s, s_mask, p, p_mask), sub))
            ns, np_ = int(s_mask.sum(1).max()), int(p_mask.sum(1).max())
            s, s_mask, p, p_mask = s[:, :ns], s_mask[:, :ns], p[:, :np_], p_mask[:, :np_]
        return (s[:, 0], p[:, 0]), rounds

    def _round(self, s, s_mask, p, p_mask, s_noise, p_noise):
        if self.coattention is not None:
            s, p = self.coattention(s, s_mask, p, p_mask)
        s, s_mask = _fuse_where_needed(self.sketch_fusion, s, s_mask, s_noise)
        p, p_mask = _fuse_where_needed(self.photo_fusion, p, p_mask, p_noise)
        return s, s_mask, p, p_mask


def _fuse_where_needed(fusion, x, mask, noise):
    """One fusion level on the rows with more than one node; the width is kept."""
    need = mask.sum(1) > 1
    if not need.any():
        return x, mask
    idx = need.nonzero()[:, 0]
    y, y_mask = fusion(x[idx], mask[idx], None if noise is None else noise[idx])
    y = nn.functional.pad(y, (0, 0, 0, 1))
    y_mask = nn.functional.pad(y_mask, (0, 1))
    if len(idx) == len(x):
        return y, y_mask
    return x.index_copy(0, idx, y), mask.index_copy(0, idx, y_mask)


def masked_max(x, mask):
    """x: [B, N, D], mask: bool [B, N] -> [B, D] max over the real nodes."""
    return x.masked_fill(~mask[..., None], float('-inf')).amax(dim=1)


VARIANTS = {
    # gate, compatibility, ReLU after merge, one merge layer shared by both branches
    'paper': dict(gate='learned', compatibility='projected', relu=True, shared_merge=False),
    'released': dict(gate='product', compatibility='dot', relu=False, shared_merge=True),
}
HEAD_METHODS = ('hierarchy', 'localised_coattn', 'no_coattn')


def build_head(variant='paper', dim=512, att_dim=128, method='hierarchy', init='identity'):
    """The pairwise head. variant: 'paper' or 'released' (the authors' pre-Sep-2020 code);
    method: 'hierarchy' (proposed), 'localised_coattn' (w/o Hierarchy), 'no_coattn';
    init: 'identity' (merges start as means, co-attention updates start small; ours, the paper
    does not say) or 'pytorch' (PyTorch's, as the authors' code)."""
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}; expected one of {sorted(VARIANTS)}')
    v = VARIANTS[variant]
    if method == 'localised_coattn':   # one round with the learned gate (paper, Table 1)
        return PairHead(CoAttention(dim, att_dim, 'learned', init), None, None)
    if method not in HEAD_METHODS:
        raise ValueError(f'unknown method {method!r}')
    coattention = None if method == 'no_coattn' else CoAttention(dim, att_dim, v['gate'], init)
    merge_s = merge_layer(dim, v['relu'], init)
    merge_p = merge_s if v['shared_merge'] else merge_layer(dim, v['relu'], init)
    return PairHead(coattention,
                    NodeFusion(merge_s, dim, v['compatibility'], att_dim),
                    NodeFusion(merge_p, dim, v['compatibility'], att_dim))
