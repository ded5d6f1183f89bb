"""The pairwise head written pair by pair with plain loops, straight from the paper's equations
(arXiv 2007.15103; docs/method.md, sections 3-5): the reference that tests/test_head.py checks the
batched head (head.PairHead) against, and that benchmarks/head_speed.py times it against.
Every function reads the parameters of a built head (head.build_head), so both compute with the
same weights.
"""
import math

import torch


def lin(layer, x):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def ref_coattention(co, S, P):
    """S: [ns, D], P: [np, D] -> updated S, P (docs/method.md, (M1)-(M4))."""
    A = lin(co.w_s, S) @ lin(co.w_p, P).T / math.sqrt(co.w_s.out_features)
    PS = torch.softmax(A, dim=1) @ P
    SP = torch.softmax(A.T, dim=1) @ S

    def update(branch, X, Y):
        if branch.gate is None:
            G = torch.sigmoid(X * Y)
        else:
            G = torch.sigmoid(lin(branch.gate, torch.cat([X, Y], 1)))
        return torch.relu(lin(branch.z, G * (X + Y))) + X
    return update(co.sketch, S, PS), update(co.photo, P, SP)


def ref_fuse(fusion, X, noise):
    """One fusion level on X: [n, D], noise [n, n] or None (greedy). docs/method.md, (M5)-(M7)."""
    n = len(X)
    Y = X if fusion.proj is None else X @ fusion.proj.weight.T
    C = Y @ Y.T
    best, best_score = None, -math.inf
    for i in range(n):
        for j in range(i + 1, n):
            score = C[i, j] + (0 if noise is None else noise[i, j])
            if score > best_score:          # strict: ties keep the first pair
                best, best_score = (i, j), score
    a, b = best
    merged = fusion.merge(torch.cat([X[a], X[b]])[None])[0]
    rest = [X[t] for t in range(n) if t not in (a, b)]
    return torch.stack(rest + [merged])


def ref_head(head, S, P, noises=None, pair=0):
    """The loop (docs/method.md, section 5) for one pair; noises[r] = (sketch noise, photo noise) of round r."""
    r = 0
    while len(S) > 1 or len(P) > 1:
        if head.coattention is not None:
            S, P = ref_coattention(head.coattention, S, P)
        ns, np_ = len(S), len(P)
        if ns > 1:
            S = ref_fuse(head.sketch_fusion, S, None if noises is None else noises[r][0][pair, :ns, :ns])
        if np_ > 1:
            P = ref_fuse(head.photo_fusion, P, None if noises is None else noises[r][1][pair, :np_, :np_])
        r += 1
    return S[0], P[0], r
