"""The evaluation fast path of the pairwise head (head.PairHead in eval mode, without autograd):
the same rounds, greedy choices and arithmetic as the paper's loop (head.py, attention.py,
hierarchy.py; docs/method.md, sections 3-5), with less work per round. PairHead.forward calls
`loop` when PairHead.fast_eval holds; tests/test_head_speed_equivalence.py checks it against the
general loop and the per-pair reference (reference.py), benchmarks/head_speed.py times it.
"""
import bisect
import functools
import itertools
import math

import torch
import torch.nn as nn


# ----------------------------------------------------------------------------- the loop (head.py)
def loop(head, s, s_mask, p, p_mask):
    """The loop in evaluation mode without autograd: the same rounds and greedy choices as
    `PairHead._loop`, with less work per round (numbers: benchmarks/head_speed.py):
      - pairs sorted by (rounds, Ns, Np) and run `eval_chunk` (eval_pairs) at a time: on a CPU each pass keeps its
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
        sides = _eval_sides(head, _Workspace(s).take)
        s_out, p_out = s.new_empty(b_all, d), p.new_empty(b_all, d)
        chunk = head.eval_chunk or eval_pairs(s.device, max(s.shape[1], p.shape[1]), d)
        for start in range(0, b_all, chunk):
            stop = min(start + chunk, b_all)
            _pass(head, s, p, ns, np_, order[start:stop], schedule[start:stop], sides,
                  s_out[start:stop], p_out[start:stop])
    return _unsort(order, s_out, p_out), rounds


def eval_pairs(device, nodes, dim):
    """Pairs per pass of the evaluation fast path (and, on a GPU, per call: model.distance_matrix)
    for nodes x dim node sets. CPU: 256, so that a pass's working set stays near the caches (a few
    MB per tensor at D = 256; on a 2-core CPU 128-256 was best with one thread, 256-512 with two;
    benchmarks/head_speed.py's 'chunks' section). CUDA: a GPU is bound by launches (~20 per
    round per pass, whatever its size), so as many pairs as fit in a quarter of the free memory
    at 24 node-sized float32 tensors per pair (the gathered nodes, the workspace), at most 65536."""
    if device.type != 'cuda':
        return 256
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(256, min(65536, free // 4 // (24 * nodes * dim * 4))))


def _pass(head, s_all, p_all, ns_all, np_all, idx, schedule, sides, s_out, p_out):
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
        if head.coattention is not None:
            s, p = coattention_round(head.coattention, s, s_carry, _mask(s_cnt, ws, s_min),
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


def _unsort(order, s_out, p_out):
    """Rows of the sorted outputs back to the caller's order."""
    return tuple(torch.empty_like(x).index_copy_(0, order, x) for x in (s_out, p_out))


def _eval_sides(head, take):
    carry = [None, None] if head.coattention is None else \
        [coattention_carry(head.coattention, side) for side in ('sketch', 'photo')]
    return (_EvalSide('s', head.sketch_fusion, carry[0], take),
            _EvalSide('p', head.photo_fusion, carry[1], take))


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
    the co-attention (coattention_carry; none without co-attention) - and which of its two
    node buffers in the workspace holds the current nodes."""

    def __init__(self, name, fusion, carry, take):
        self.name, self.fusion, self.take = name, fusion, take
        self.comp_w = fusion_proj(fusion)
        self.merge = fusion_merge(fusion)
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


# ----------------------------------------------------------------------------- co-attention (attention.py)
def branch_carry(branch):
    """The part of a CoAttentionBranch's update that is linear in X alone: learned gate ->
    (W_G[:, :D] [D, D], b_G), so that W_G [X ; Y] + b_G = (X W_G[:, :D]^T + b_G) + Y W_G[:, D:]^T and the first term can be
    computed together with the other projections of X; product gate -> None."""
    if branch.gate is None:
        return None
    d = branch.z.in_features
    return branch.gate.weight[:, :d], branch.gate.bias


def branch_update(branch, x, attended, x_gate, out, g_out=None):
    """The update on flat rows for the evaluation fast path (no autograd). x, attended: [R, D];
    x_gate: [R, D] = X W_G[:, :D]^T + b_G (a view is fine; the learned gate is computed in it)
    or None for the product gate, which is computed in g_out [R, D] (None: a new tensor).
    `attended` is overwritten; the result is written to out [R, D] and returned. Same
    arithmetic as CoAttentionBranch.forward, with W_G [X ; Y] split into X W_G[:, :D]^T + Y W_G[:, D:]^T."""
    if branch.gate is None:
        g = torch.mul(x, attended, out=g_out).sigmoid_()
    else:
        g = x_gate.addmm_(attended, branch.gate.weight[:, x.shape[1]:].t()).sigmoid_()
    u = attended.add_(x).mul_(g)                                   # G * (X + Y)
    return torch.addmm(branch.z.bias, u, branch.z.weight.t(), out=out).relu_().add_(x)


def coattention_carry(co, side):
    """side 'sketch' | 'photo' -> (weight [E, D], bias [E] or None) of the projections of that
    side's nodes that the evaluation fast path computes in one product: the attention
    projection (first att_dim columns), then, with the learned gate, the gate's X half with
    its bias."""
    w_att = (co.w_s if side == 'sketch' else co.w_p).weight
    gate = branch_carry(co.sketch if side == 'sketch' else co.photo)
    if gate is None:
        return w_att, None
    return torch.cat([w_att, gate[0]]), torch.cat([w_att.new_zeros(len(w_att)), gate[1]])


def coattention_round(co, s, s_carry, s_mask, p, p_carry, p_mask, take, out_names):
    """One round for the evaluation fast path (no autograd): s: [B, Ns, D], s_carry: [B, Ns, E]
    = s's rows through `coattention_carry(co, 'sketch')` (likewise p; their gate columns are
    overwritten), s_mask / p_mask: bool [B, N] or None when the side has no padding. take(name, shape)
    gives scratch tensors (the pass's workspace); the results go to the scratch tensors
    out_names = (sketch name, photo name). Returns the updated (s, p), same shapes; padded rows
    hold finite values that no real node reads (they are not zeroed)."""
    att = co.w_s.out_features
    b, ns, d = s.shape
    np_ = p.shape[1]
    a = torch.bmm(s_carry[..., :att], p_carry[..., :att].transpose(1, 2),
                  out=take('att.a', (b, ns, np_))).mul_(co.scale)
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
    s_new = branch_update(co.sketch, s.view(b * ns, d), s_att.view(b * ns, d), s_gate,
                          take(out_names[0], (b * ns, d)), None if gated else take('s.g', (b * ns, d)))
    p_new = branch_update(co.photo, p.view(b * np_, d), p_att.view(b * np_, d), p_gate,
                          take(out_names[1], (b * np_, d)), None if gated else take('p.g', (b * np_, d)))
    return s_new.view(b, ns, d), p_new.view(b, np_, d)


# ----------------------------------------------------------------------------- node fusion (hierarchy.py)
def fusion_proj(fusion):
    """W_c [comp_dim, D] of the projected compatibility, or None for the plain dot product."""
    return None if fusion.proj is None else fusion.proj.weight


def fusion_merge(fusion):
    """(nn.Linear with bias, relu) when the merge layer is one of merge_layer's, else None
    (the fast path then calls the module)."""
    if fusion.rule != 'linear':
        raise ValueError(f'the evaluation fast path has only the linear merge, not {fusion.rule!r}')
    m, relu = fusion.merge, False
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
