"""The evaluation fast path of PairHead (eval mode, no autograd: `PairHead._loop_eval`) against
the general path (`PairHead._loop`, which training uses) and the per-pair float64 reference
(reference.py): same merges, same embeddings, same round counts, whatever the node counts,
padding, finished pairs, ties and batch composition."""
import pytest
import torch
from test_head import D, random_pairs

import head as head_module
from head import build_head
from methods import METHODS
from reference import ref_head

CASES = [(variant, method, init) for variant in ('paper', 'released')
         for method in ('hierarchy', 'no_coattn') for init in ('identity', 'pytorch')]


def make(variant, method, init, dim=D, att_dim=8, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return build_head(variant, dim=dim, att_dim=att_dim, init=init, **METHODS[method].build).to(dtype).eval()


def general_path(head, s, s_mask, p, p_mask):
    """The head's general loop (the one training runs), greedy because the head is in eval mode."""
    with torch.no_grad():
        (s_out, p_out), rounds = head._loop(s, s_mask, p, p_mask)
    return s_out, p_out, rounds


def fast_path(head, s, s_mask, p, p_mask):
    with torch.no_grad():
        return head(s, s_mask, p, p_mask, return_rounds=True)


@pytest.mark.parametrize('variant,method,init', CASES)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fast_path_matches_general_path_and_reference(variant, method, init, seed):
    head = make(variant, method, init, seed=seed)
    s, s_mask, p, p_mask, ns, np_ = random_pairs(24, max_nodes=20, seed=10 + seed)
    fs, fp, fr = fast_path(head, s, s_mask, p, p_mask)
    gs, gp, gr = general_path(head, s, s_mask, p, p_mask)
    torch.testing.assert_close(fs, gs, atol=1e-10, rtol=0)
    torch.testing.assert_close(fp, gp, atol=1e-10, rtol=0)
    assert torch.equal(fr, gr)
    with torch.no_grad():
        for b in range(0, len(s), 3):
            rs, rp, r = ref_head(head, s[b, :ns[b]], p[b, :np_[b]])
            torch.testing.assert_close(fs[b], rs, atol=1e-5, rtol=0)
            torch.testing.assert_close(fp[b], rp, atol=1e-5, rtol=0)
            assert fr[b] == r


@pytest.mark.parametrize('variant', ['paper', 'released'])
def test_fast_path_float32_and_wider_nodes(variant):
    """float32 at the real sizes' shape (att_dim < D), equal node counts (no padding at all) and
    mixed ones, against the general path."""
    head = make(variant, 'hierarchy', 'identity', dim=64, att_dim=32, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    for ns, np_ in [(16, 16), (10, 16), (16, 8), (1, 20), (20, 1)]:
        s, p = torch.rand(6, ns, 64, generator=g), torch.rand(6, np_, 64, generator=g)
        sm, pm = torch.ones(6, ns, dtype=torch.bool), torch.ones(6, np_, dtype=torch.bool)
        fs, fp, fr = fast_path(head, s, sm, p, pm)
        gs, gp, gr = general_path(head, s, sm, p, pm)
        torch.testing.assert_close(fs, gs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fp, gp, atol=1e-5, rtol=1e-5)
        assert torch.equal(fr, gr) and int(fr[0]) == max(ns, np_) - 1


@pytest.mark.parametrize('variant', ['paper', 'released'])
def test_ties_go_to_the_first_pair(variant):
    """Node sets with repeated nodes give exactly equal compatibilities; the fast path must break
    the ties as the reference does (the first pair in row-major order) - visible in the result
    because the repeated nodes sit between different ones."""
    head = make(variant, 'no_coattn', 'pytorch')
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, D, generator=g, dtype=torch.float64)
    rows = [[0, 1, 0, 2, 1, 3, 0], [2, 2, 2, 2, 1], [3, 0, 3, 0, 3, 0]]
    s = torch.zeros(len(rows), 7, D, dtype=torch.float64)
    mask = torch.zeros(len(rows), 7, dtype=torch.bool)
    for k, r in enumerate(rows):
        s[k, :len(r)], mask[k, :len(r)] = base[r], True
    fs, fp, _ = fast_path(head, s, mask, s, mask)
    with torch.no_grad():
        for k, r in enumerate(rows):
            rs, rp, _ = ref_head(head, base[r], base[r])
            torch.testing.assert_close(fs[k], rs, atol=1e-12, rtol=0)
            torch.testing.assert_close(fp[k], rp, atol=1e-12, rtol=0)


def test_a_pair_does_not_depend_on_its_batch():
    """Sorting by round count, finished pairs leaving the batch and the padding of the others do not
    change a pair's result: the batch, pair by pair and in reverse order agree."""
    head = make('paper', 'hierarchy', 'identity')
    s, s_mask, p, p_mask, ns, np_ = random_pairs(16, max_nodes=12, seed=7)
    fs, fp, _ = fast_path(head, s, s_mask, p, p_mask)
    rev = torch.arange(len(s) - 1, -1, -1)
    rs, rp, _ = fast_path(head, s[rev], s_mask[rev], p[rev], p_mask[rev])
    torch.testing.assert_close(rs[rev], fs, atol=1e-12, rtol=0)
    torch.testing.assert_close(rp[rev], fp, atol=1e-12, rtol=0)
    for b in range(len(s)):
        one = fast_path(head, s[b:b + 1, :ns[b]], s_mask[b:b + 1, :ns[b]],
                        p[b:b + 1, :np_[b]], p_mask[b:b + 1, :np_[b]])
        torch.testing.assert_close(one[0][0], fs[b], atol=1e-12, rtol=0)
        torch.testing.assert_close(one[1][0], fp[b], atol=1e-12, rtol=0)


def test_which_path_runs(monkeypatch):
    """Eval without autograd takes the fast path; training, or eval with autograd, the general one
    (the straight-through Gumbel path and any gradient need it)."""
    calls = []
    for name in ('_loop', '_loop_eval'):
        original = getattr(head_module.PairHead, name)
        monkeypatch.setattr(head_module.PairHead, name,
                            lambda self, *a, _n=name, _f=original: calls.append(_n) or _f(self, *a))
    head = make('paper', 'hierarchy', 'identity')
    s, s_mask, p, p_mask, _, _ = random_pairs(4, max_nodes=5, seed=1)
    with torch.no_grad():
        head(s, s_mask, p, p_mask)
    with torch.inference_mode():
        head(s, s_mask, p, p_mask)
    head(s, s_mask, p, p_mask)                    # eval, autograd on
    head.train()
    head(s, s_mask, p, p_mask)
    with torch.no_grad():
        head(s, s_mask, p, p_mask)                # training: Gumbel noise, general path
    assert calls == ['_loop_eval', '_loop_eval', '_loop', '_loop', '_loop']


def test_fast_path_leaves_inputs_alone():
    head = make('paper', 'hierarchy', 'identity')
    s, s_mask, p, p_mask, _, _ = random_pairs(8, max_nodes=9, seed=2)
    before = [t.clone() for t in (s, s_mask, p, p_mask)]
    fast_path(head, s, s_mask, p, p_mask)
    for t, b in zip((s, s_mask, p, p_mask), before):
        assert torch.equal(t, b)


@pytest.mark.parametrize('chunk', [1, 5, 64])
def test_passes_of_eval_chunk_pairs(chunk):
    """The fast path runs its sorted pairs `eval_chunk` at a time; any pass size gives the same
    embeddings, in the caller's order."""
    head = make('paper', 'hierarchy', 'pytorch')
    s, s_mask, p, p_mask, _, _ = random_pairs(23, max_nodes=11, seed=8)
    gs, gp, gr = general_path(head, s, s_mask, p, p_mask)
    head.eval_chunk = chunk
    fs, fp, fr = fast_path(head, s, s_mask, p, p_mask)
    torch.testing.assert_close(fs, gs, atol=1e-10, rtol=0)
    torch.testing.assert_close(fp, gp, atol=1e-10, rtol=0)
    assert torch.equal(fr, gr)


def test_fast_path_outputs_are_ordinary_tensors():
    """The fast path runs under torch.inference_mode; what it returns must not be an inference
    tensor (callers may update it in place or use it later with autograd on)."""
    head = make('paper', 'hierarchy', 'identity')
    s, s_mask, p, p_mask, _, _ = random_pairs(5, max_nodes=6, seed=3)
    s_out, p_out, rounds = fast_path(head, s, s_mask, p, p_mask)
    for t in (s_out, p_out, rounds):
        assert not t.is_inference()
    s_out.mul_(2)
    (s_out.requires_grad_() * 2).sum().backward()


def test_fast_path_with_a_merge_layer_of_another_form():
    """A merge module that is not merge_layer's Linear (+ ReLU) is called as a module."""
    head = make('paper', 'hierarchy', 'pytorch')
    head.sketch_fusion.merge = torch.nn.Sequential(head.sketch_fusion.merge, torch.nn.Tanh())
    s, s_mask, p, p_mask, _, _ = random_pairs(9, max_nodes=8, seed=4)
    fs, fp, _ = fast_path(head, s, s_mask, p, p_mask)
    gs, gp, _ = general_path(head, s, s_mask, p, p_mask)
    torch.testing.assert_close(fs, gs, atol=1e-10, rtol=0)
    torch.testing.assert_close(fp, gp, atol=1e-10, rtol=0)
