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
            g = torch.sigmoid(self.gate(torch.cat([x, attended], dim=-1)))
        return torch.relu(self.z(g * (x + attended))) + x

    # ------------------------------------------------------------ evaluation fast path
    def eval_carry(self):
        """The part of the update that is linear in X alone, for the evaluation fast path
        (`PairHead`): learned gate -> (W_G[:, :D] [D, D], b_G), so that
        W_G [X ; Y] + b_G = (X W_G[:, :D]^T + b_G) + Y W_G[:, D:]^T and the first term can be
        computed together with the other projections of X; product gate -> None."""
        if self.gate is None:
            return None
        d = self.z.in_features
        return self.gate.weight[:, :d], self.gate.bias

    def forward_eval(self, x, attended, x_gate, out, g_out=None):
        """The update on flat rows for the evaluation fast path (no autograd). x, attended: [R, D];
        x_gate: [R, D] = X W_G[:, :D]^T + b_G (a view is fine; the learned gate is computed in it)
        or None for the product gate, which is computed in g_out [R, D] (None: a new tensor).
        `attended` is overwritten; the result is written to out [R, D] and returned. Same
        arithmetic as forward, with W_G [X ; Y] split into X W_G[:, :D]^T + Y W_G[:, D:]^T."""
        if self.gate is None:
            g = torch.mul(x, attended, out=g_out).sigmoid_()
        else:
            g = x_gate.addmm_(attended, self.gate.weight[:, x.shape[1]:].t()).sigmoid_()
        u = attended.add_(x).mul_(g)                                   # G * (X + Y)
        return torch.addmm(self.z.bias, u, self.z.weight.t(), out=out).relu_().add_(x)


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
        a = torch.bmm(self.w_s(s), self.w_p(p).transpose(1, 2)) * self.scale   # [B, Ns, Np]
        # Every pair has >= 1 real node per side, so no softmax row is all -inf.
        s_att = torch.softmax(a.masked_fill(~p_mask[:, None, :], float('-inf')), dim=2)
        p_att = torch.softmax(a.transpose(1, 2).masked_fill(~s_mask[:, None, :], float('-inf')), dim=2)
        s_new = self.sketch(s, torch.bmm(s_att, p)) * s_mask[..., None]
        p_new = self.photo(p, torch.bmm(p_att, s)) * p_mask[..., None]
        return s_new, p_new

    def eval_carry(self, side):
        """side 'sketch' | 'photo' -> (weight [E, D], bias [E] or None) of the projections of that
        side's nodes that the evaluation fast path computes in one product: the attention
        projection (first att_dim columns), then, with the learned gate, the gate's X half with
        its bias."""
        w_att = (self.w_s if side == 'sketch' else self.w_p).weight
        gate = (self.sketch if side == 'sketch' else self.photo).eval_carry()
        if gate is None:
            return w_att, None
        return torch.cat([w_att, gate[0]]), torch.cat([w_att.new_zeros(len(w_att)), gate[1]])

    def forward_eval(self, s, s_carry, s_mask, p, p_carry, p_mask, take, out_names):
        """One round for the evaluation fast path (no autograd): s: [B, Ns, D], s_carry: [B, Ns, E]
        = s's rows through `eval_carry('sketch')` (likewise p; their gate columns are overwritten),
        s_mask / p_mask: bool [B, N] or None when the side has no padding. take(name, shape)
        gives scratch tensors (PairHead's workspace); the results go to the scratch tensors
        out_names = (sketch name, photo name). Returns the updated (s, p), same shapes; padded rows
        hold finite values that no real node reads (they are not zeroed)."""
        att = self.w_s.out_features
        b, ns, d = s.shape
        np_ = p.shape[1]
        a = torch.bmm(s_carry[..., :att], p_carry[..., :att].transpose(1, 2),
                      out=take('att.a', (b, ns, np_))).mul_(self.scale)
        # Both softmaxes run over dim 1 of a contiguous tensor (torch's softmax over a short last
        # dim is slow) and feed bmm as transposed views: softmax(A^T, rows) = softmax(A, dim 1)^T.
        a_t = take('att.a_t', (b, np_, ns)).copy_(a.transpose(1, 2))
        if s_mask is not None:
            a.masked_fill_(~s_mask[:, :, None], float('-inf'))
        if p_mask is not None:
            a_t.masked_fill_(~p_mask[:, :, None], float('-inf'))
        s_soft = torch.softmax(a_t, 1, out=take('att.s_soft', (b, np_, ns)))
        p_soft = torch.softmax(a, 1, out=take('att.p_soft', (b, ns, np_)))
        s_att = torch.bmm(s_soft.transpose(1, 2), p, out=take('s.y', (b, ns, d)))   # softmax_row(A) P
        p_att = torch.bmm(p_soft.transpose(1, 2), s, out=take('p.y', (b, np_, d)))  # softmax_row(A^T) S
        gated = s_carry.shape[-1] > att
        s_gate = s_carry[..., att:].reshape(b * ns, -1) if gated else None
        p_gate = p_carry[..., att:].reshape(b * np_, -1) if gated else None
        s_new = self.sketch.forward_eval(s.view(b * ns, d), s_att.view(b * ns, d), s_gate,
                                         take(out_names[0], (b * ns, d)),
                                         None if gated else take('s.g', (b * ns, d)))
        p_new = self.photo.forward_eval(p.view(b * np_, d), p_att.view(b * np_, d), p_gate,
                                        take(out_names[1], (b * np_, d)),
                                        None if gated else take('p.g', (b * np_, d)))
        return s_new.view(b, ns, d), p_new.view(b, np_, d)
