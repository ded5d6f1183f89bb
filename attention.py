"""Cross-modal co-attention between the sketch nodes and the photo nodes of a pair
(arXiv 2007.15103; docs/method.md, (M1)-(M4)).

One round, batched over B pairs whose node counts differ; padded nodes are masked out of the
softmax and come back as zeros.
"""
import math

import torch
import torch.nn as nn

from hierarchy import INITS

GATES = ('learned', 'product')
# init 'identity' shrinks Z's initial weights by this factor: each round starts close to the
# identity (the update is small next to the residual) but Z still gets gradients; a zero Z
# would not (ReLU'(0) = 0).
IDENTITY_INIT_SCALE = 0.1


class CoAttentionBranch(nn.Module):
    """The update of one side: X~ = ReLU(Z(G * (X + Y))) + X, Y the attended other side.

    gate 'learned' (paper): G = sigmoid(W_G [X ; Y]), W_G: 2D -> D.
    gate 'product' (authors' code): G = sigmoid(X * Y), no parameters.
    init 'identity': Z starts at IDENTITY_INIT_SCALE times PyTorch's init; 'pytorch': PyTorch's.
    """

    def __init__(self, dim, gate='learned', init='identity'):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f'unknown gate {gate!r}; expected one of {GATES}')
        if init not in INITS:
            raise ValueError(f'unknown init {init!r}; expected one of {INITS}')
        self.z = nn.Linear(dim, dim)
        if init == 'identity':
            with torch.no_grad():
                self.z.weight.mul_(IDENTITY_INIT_SCALE)
                self.z.bias.mul_(IDENTITY_INIT_SCALE)
        self.gate = nn.Linear(2 * dim, dim) if gate == 'learned' else None

    def forward(self, x, attended):
        """x, attended: [B, N, D] -> [B, N, D]"""
        if self.gate is None:
            g = torch.sigmoid(x * attended)
        else:
            g = torch.sigmoid(self.gate(torch.cat([x, attended], dim=-1)))     # (M3)
        return torch.relu(self.z(g * (x + attended))) + x                     # (M4)

class CoAttention(nn.Module):
    """A = (S W_s)(P W_p)^T / sqrt(d); each side gathers the other through a row softmax of A (or A^T).

    W_s, W_p: D -> att_dim, no bias; each side has its own update branch (Z and, if learned, W_G).
    """

    def __init__(self, dim=512, att_dim=128, gate='learned', init='identity'):
        super().__init__()
        self.w_s = nn.Linear(dim, att_dim, bias=False)
        self.w_p = nn.Linear(dim, att_dim, bias=False)
        self.sketch = CoAttentionBranch(dim, gate, init)
        self.photo = CoAttentionBranch(dim, gate, init)
        self.scale = 1.0 / math.sqrt(att_dim)

    def forward(self, s, s_mask, p, p_mask):
        """s: [B, Ns, D] sketch nodes, s_mask: bool [B, Ns] (True = real node);
        p: [B, Np, D] photo nodes, p_mask: bool [B, Np].
        Returns the updated (s [B, Ns, D], p [B, Np, D]), padded nodes zero."""
        a = torch.bmm(self.w_s(s), self.w_p(p).transpose(1, 2)) * self.scale   # (M1), scaled (M2) [B, Ns, Np]
        # Every pair has >= 1 real node per side, so no softmax row is all -inf.
        s_att = torch.softmax(a.masked_fill(~p_mask[:, None, :], float('-inf')), dim=2)
        p_att = torch.softmax(a.transpose(1, 2).masked_fill(~s_mask[:, None, :], float('-inf')), dim=2)
        s_new = self.sketch(s, torch.bmm(s_att, p)) * s_mask[..., None]        # (M2) P^S, then (M3)-(M4)
        p_new = self.photo(p, torch.bmm(p_att, s)) * p_mask[..., None]
        return s_new, p_new
