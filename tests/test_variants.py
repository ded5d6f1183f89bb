"""The hierarchy's departures from the paper (docs/method.md, section 8): the batched head with each
option against a per-pair float64 reference, and the properties each option is there for."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_head import D, RecordingGumbel, random_pairs

from head import build_head
from losses import TripletLoss
from methods import METHODS
from model import CrossModalHierarchy
from reference import ref_coattention


# ---------------------------------------------------------------- reference: one pair, loops
def ref_fuse(fusion, X, sizes, noise):
    """One fusion level on X [n, D] with leaf counts `sizes` (list), noise [n, n] or None: one pair,
    or (level_merges 'all') disjoint pairs picked one after another among the nodes left."""
    n = len(X)
    Y = X if fusion.proj is None else X @ fusion.proj.weight.T
    if fusion.log_scale is not None:
        Y = F.normalize(Y, dim=1)
    C = Y @ Y.T * (1 if fusion.log_scale is None else fusion.log_scale.exp())
    left, picked = set(range(n)), []
    for _ in range(1 if fusion.level_merges == 'one' else n // 2):
        candidates = [(i, j) for i in range(n) for j in range(i + 1, n) if i in left and j in left]
        if fusion.selection.startswith('balanced'):
            smallest = min(sizes[i] + sizes[j] for i, j in candidates)
            candidates = [(i, j) for i, j in candidates if sizes[i] + sizes[j] == smallest]
        best, best_score = None, -math.inf
        for i, j in candidates:
            score = C[i, j] + (0 if noise is None else noise[i, j])
            if score > best_score:          # strict: ties keep the first pair
                best, best_score = (i, j), score
        picked.append(best)
        left -= set(best)
    merged = []
    for a, b in picked:
        na, nb = sizes[a], sizes[b]
        if fusion.rule == 'weighted':
            alpha = na / (na + nb)
            merged.append(fusion.merge(torch.cat([2 * alpha * X[a], 2 * (1 - alpha) * X[b]])[None])[0])
        elif fusion.rule == 'maxres':
            merged.append(torch.maximum(X[a], X[b]) + fusion.merge(torch.cat([X[a], X[b]])[None])[0])
        else:
            merged.append(fusion.merge(torch.cat([X[a], X[b]])[None])[0])
    keep = sorted(left)
    return (torch.stack([X[t] for t in keep] + merged),
            [sizes[t] for t in keep] + [sizes[a] + sizes[b] for a, b in picked])


def ref_head(head, S, P, noises=None, pair=0):
    """The loop for one pair with the head's merge, selection, round norm and readout."""
    s_sizes, p_sizes = [1] * len(S), [1] * len(P)
    pool = (S.amax(0), P.amax(0))
    r = 0
    while len(S) > 1 or len(P) > 1:
        if head.coattention is not None:
            S, P = ref_coattention(head.coattention, S, P)
        if r == 0:
            pool = (S.amax(0), P.amax(0))
        ns, np_ = len(S), len(P)
        if ns > 1:
            S, s_sizes = ref_fuse(head.sketch_fusion, S, s_sizes, None if noises is None else noises[r][0][pair, :ns, :ns])
        if np_ > 1:
            P, p_sizes = ref_fuse(head.photo_fusion, P, p_sizes, None if noises is None else noises[r][1][pair, :np_, :np_])
        if head.round_norm == 'l2':
            S, P = F.normalize(S, dim=1), F.normalize(P, dim=1)
        r += 1
    if head.readout == 'root+pool':
        return (torch.cat([F.normalize(S[0], dim=0), F.normalize(pool[0], dim=0)]),
                torch.cat([F.normalize(P[0], dim=0), F.normalize(pool[1], dim=0)]), r)
    return S[0], P[0], r


OPTIONS = [dict(merge='weighted'), dict(merge='weighted', merge_act='none'), dict(merge='maxres'),
           dict(selection='scaled'), dict(selection='balanced'), dict(selection='balanced+scaled'),
           dict(readout='root+pool'), dict(round_norm='l2'), dict(level_merges='all'),
           dict(level_merges='all', selection='balanced', merge='maxres'),
           dict(merge='weighted', selection='balanced', readout='root+pool', round_norm='l2')]


def make_head(method='hierarchy', variant='paper', seed=0, **kw):
    torch.manual_seed(seed)
    head = build_head(variant, dim=D, att_dim=8, **METHODS[method].build, **kw).double()
    for fusion in (head.sketch_fusion, head.photo_fusion):   # non-zero residuals: maxres must not be trivial
        if fusion is not None and fusion.rule == 'maxres':
            with torch.no_grad():
                fusion.merge.weight.normal_(0, 0.05)
                fusion.merge.bias.normal_(0, 0.05)
    return head


# ---------------------------------------------------------------- equivalence
@pytest.mark.parametrize('kw', OPTIONS, ids=lambda kw: '-'.join(f'{k}={v}' for k, v in kw.items()))
@pytest.mark.parametrize('method', ['hierarchy', 'no_coattn'])
def test_batched_head_matches_reference_eval(kw, method):
    head = make_head(method, **kw).eval()
    s, s_mask, p, p_mask, ns, np_ = random_pairs(10, max_nodes=12, seed=1)
    with torch.no_grad():
        s_out, p_out, rounds = head(s, s_mask, p, p_mask, return_rounds=True)
        for b in range(len(s)):
            rs, rp, r = ref_head(head, s[b, :ns[b]], p[b, :np_[b]])
            torch.testing.assert_close(s_out[b], rs, atol=1e-8, rtol=0)
            torch.testing.assert_close(p_out[b], rp, atol=1e-8, rtol=0)
            assert rounds[b] == r
            if head.sketch_fusion.level_merges == 'all':
                assert r == math.ceil(math.log2(max(ns[b], np_[b])))


@pytest.mark.parametrize('kw', OPTIONS, ids=lambda kw: '-'.join(f'{k}={v}' for k, v in kw.items()))
def test_batched_head_matches_reference_train_same_gumbel(kw):
    head = make_head(**kw).train()
    head.gumbel = RecordingGumbel(seed=3)
    s, s_mask, p, p_mask, ns, np_ = random_pairs(8, max_nodes=12, seed=2)
    s_out, p_out = head(s, s_mask, p, p_mask)
    noises = head.gumbel.rounds()
    with torch.no_grad():
        for b in range(len(s)):
            rs, rp, _ = ref_head(head, s[b, :ns[b]], p[b, :np_[b]], noises, pair=b)
            torch.testing.assert_close(s_out[b], rs, atol=1e-8, rtol=0)
            torch.testing.assert_close(p_out[b], rp, atol=1e-8, rtol=0)


def test_departures_default_to_the_papers_head():
    """With no departure the head is the paper's: the evaluation fast path computes it."""
    assert make_head().fast_eval
    for kw in OPTIONS:
        assert not make_head(**kw).fast_eval, kw


# ---------------------------------------------------------------- what each option is for
def random_plan(n, g):
    """A random forced plan for n nodes: round r merges a random pair (a < b) of the n - r nodes."""
    plan = []
    for k in range(n, 1, -1):
        a, b = sorted(torch.randperm(k, generator=g)[:2].tolist())
        plan.append([a, b])
    return torch.tensor(plan, dtype=torch.long).view(-1, 2)


@pytest.mark.parametrize('mode', ['greedy', 'gumbel', 'forced'])
def test_weighted_merges_give_the_mean_of_the_leaves_for_any_tree(mode):
    """--merge weighted at the identity init, no co-attention: every root is exactly the masked
    mean of its leaves, whatever pairs are merged (greedy, random Gumbel trees, any forced plan)."""
    g = torch.Generator().manual_seed(0)
    head = build_head('paper', dim=D, coattention=False, merge='weighted', merge_act='none').double()
    head.train(mode == 'gumbel')
    b, n = 6, 9
    s, p = torch.randn(b, n, D, generator=g, dtype=torch.float64), torch.randn(b, n, D, generator=g, dtype=torch.float64)
    counts = torch.tensor([9, 1, 2, 5, 8, 3])
    mask = torch.arange(n)[None] < counts[:, None]
    s, p = s * mask[..., None], p * mask[..., None]
    plan = None
    if mode == 'forced':        # a plan for the real nodes of each set; the rest of it is never reached
        plan = torch.stack([torch.cat([random_plan(int(c), g), torch.zeros(n - int(c), 2, dtype=torch.long)])
                            for c in counts])
    with torch.no_grad():
        s_out, p_out = head(s, mask, p, mask, p_plan=plan)
    mean = lambda x: x.sum(1) / counts[:, None]          # noqa: E731
    torch.testing.assert_close(s_out, mean(s), atol=1e-12, rtol=0)
    torch.testing.assert_close(p_out, mean(p), atol=1e-12, rtol=0)


def test_weighted_merges_with_relu_on_non_negative_nodes():
    """With the merge's ReLU the mean holds for non-negative nodes (--node_act relu)."""
    head = build_head('paper', dim=D, coattention=False, merge='weighted').double().train()
    x = torch.rand(4, 7, D, dtype=torch.float64)
    mask = torch.ones(4, 7, dtype=torch.bool)
    with torch.no_grad():
        s_out, p_out = head(x, mask, x.flip(1), mask)
    torch.testing.assert_close(s_out, x.mean(1), atol=1e-12, rtol=0)
    torch.testing.assert_close(p_out, x.mean(1), atol=1e-12, rtol=0)


@pytest.mark.parametrize('train', [False, True])
def test_maxres_merges_give_the_max_of_the_leaves(train):
    """--merge maxres at its init (residual 0): every root is exactly the masked max of its leaves."""
    g = torch.Generator().manual_seed(1)
    head = build_head('paper', dim=D, coattention=False, merge='maxres').double().train(train)
    counts = torch.tensor([7, 1, 3, 6])
    mask = torch.arange(7)[None] < counts[:, None]
    s = torch.randn(4, 7, D, generator=g, dtype=torch.float64) * mask[..., None]
    p = torch.randn(4, 7, D, generator=g, dtype=torch.float64) * mask[..., None]
    with torch.no_grad():
        s_out, p_out = head(s, mask, p, mask)
    masked_max = lambda x: x.masked_fill(~mask[..., None], -math.inf).amax(1)     # noqa: E731
    torch.testing.assert_close(s_out, masked_max(s), atol=0, rtol=0)
    torch.testing.assert_close(p_out, masked_max(p), atol=0, rtol=0)


@pytest.mark.parametrize('n', [2, 3, 5, 8, 9, 13, 16])
def test_balanced_selection_builds_trees_of_logarithmic_depth(n):
    g = torch.Generator().manual_seed(n)
    for selection, deepest in (('balanced', math.ceil(math.log2(n))), ('gumbel', n - 1)):
        head = make_head(selection=selection)
        s = torch.randn(3, n, D, generator=g, dtype=torch.float64)
        mask = torch.ones(3, n, dtype=torch.bool)
        trees = head.trees(s, mask, s.flip(1), mask)
        if selection == 'balanced':
            assert trees['sketch_depth'] == trees['photo_depth'] == deepest
            assert trees['sketch_effective_leaves'] > n / 2
        else:
            assert trees['sketch_depth'] <= deepest


def test_scaled_selection_makes_training_trees_follow_the_greedy_ones():
    """At initialisation on unit-length nodes the paper's logits are small against the Gumbel
    noise (its training merges are nearly random); the scaled cosine logits are not."""
    g = torch.Generator().manual_seed(0)
    s = F.normalize(torch.randn(32, 12, D, generator=g, dtype=torch.float64), dim=-1)
    p = F.normalize(torch.randn(32, 16, D, generator=g, dtype=torch.float64), dim=-1)
    ms, mp = torch.ones(32, 12, dtype=torch.bool), torch.ones(32, 16, dtype=torch.bool)
    agreement = {}
    for selection in ('gumbel', 'scaled'):
        head = make_head(selection=selection).train()
        torch.manual_seed(1)
        with torch.no_grad():
            head(s, ms, p, mp)
        agreement[selection] = head.merge_agreement()
        assert head.merge_agreement() == {}                  # read once, then reset
    assert agreement['scaled']['photo_greedy_merges'] > 3 * agreement['gumbel']['photo_greedy_merges'], agreement
    assert agreement['scaled']['sketch_greedy_merges'] > 2 * agreement['gumbel']['sketch_greedy_merges'], agreement


def test_level_loss_terms_are_the_pooled_nodes_after_every_round():
    head = make_head().train()
    head.gumbel = RecordingGumbel(seed=5)
    model = CrossModalHierarchy(None, None, head, level_loss=True).double()
    s, s_mask, p, p_mask, ns, np_ = random_pairs(6, max_nodes=9, seed=3)
    qi, gi = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1]), torch.tensor([2, 3, 4, 5, 0, 1, 1, 2])
    terms = model.training_distances({'nodes': s, 'mask': s_mask}, {'nodes': p, 'mask': p_mask}, qi, gi)
    rounds = int(torch.maximum(ns[qi], np_[gi]).max()) - 1
    assert set(terms) == {'pairs', 'levels'} and terms['levels'].shape == (rounds, len(qi))
    # The last level of a pair is its two roots, L2-normalised (one node each: the max-pool is the node).
    last = terms['levels'][-1]
    head.gumbel = RecordingGumbel(seed=5)
    levels = []
    s_out, p_out = head(s[qi], s_mask[qi], p[gi], p_mask[gi], levels=levels)
    torch.testing.assert_close(last, (F.normalize(s_out, dim=1) - F.normalize(p_out, dim=1)).pow(2).sum(1))
    assert len(levels) == rounds and torch.isfinite(last).all()
    # The loss of [R, P] distances is the mean of the per-level losses.
    loss = TripletLoss(0.2)
    names = ['a', 'b', 'c', 'd']
    per_level = torch.stack([loss(row, names) for row in terms['levels']])
    torch.testing.assert_close(loss(terms['levels'], names), per_level.mean())


def test_node_act_relu_gives_non_negative_nodes():
    from model import RegionEncoder
    enc = RegionEncoder(torch.nn.Conv2d(3, 8, 3, padding=1), channels=8, dim=6, roi_size=2, node_act='relu')
    boxes = torch.tensor([[[0., 0., 16., 16.], [4., 4., 12., 12.]]]).expand(2, 2, 4)
    nodes = enc(torch.randn(2, 3, 16, 16), boxes, torch.ones(2, 2, dtype=torch.bool))
    plain = RegionEncoder(enc.backbone, channels=8, dim=6, roi_size=2)
    plain.proj = enc.proj
    raw = plain(torch.randn(2, 3, 16, 16), boxes, torch.ones(2, 2, dtype=torch.bool))
    assert (nodes >= 0).all() and (raw < 0).any()


def test_tree_statistics_of_a_chain_and_of_a_balanced_tree():
    """trees(): a chain of n leaves under mean merges has leaf weights 2^-1, ..., 2^-(n-1), 2^-(n-1)."""
    head = make_head(method='no_coattn', merge='linear')
    n = 6
    x = torch.arange(1, n + 1, dtype=torch.float64)[None, :, None].expand(1, n, D) * torch.ones(D, dtype=torch.float64)
    # Compatibility X X^T of growing magnitudes: greedy always merges the newest node with the largest left.
    head.sketch_fusion.proj = head.photo_fusion.proj = None
    mask = torch.ones(1, n, dtype=torch.bool)
    trees = head.trees(x, mask, x, mask)
    w = [2.0 ** -k for k in range(1, n)] + [2.0 ** -(n - 1)]
    assert trees['sketch_depth'] == n - 1
    assert trees['sketch_effective_leaves'] == pytest.approx(1 / sum(v * v for v in w))


def test_a_hierarchy_plus_checkpoint_rebuilds_the_same_model(tmp_path):
    """Its departures are model options stored with the weights: experiment.load_model rebuilds the
    model that was trained, and it ranks exactly as the model at the end of training."""
    import experiment
    import main
    import retrieval
    from test_train import TINY
    flags = ['--method', 'hierarchy_plus', '--selection', 'balanced+scaled', '--merge', 'weighted',
             '--node_act', 'relu', '--level_merges', 'all', '--level_loss']   # round_norm, readout: the row's
    m = main.main(['--data_root', str(tmp_path / 'data'), *TINY, '--output_dir', str(tmp_path / 'runs'),
                   '--run_name', 'plus', '--max_steps', '3', *flags])
    model, args, test, _, _ = experiment.load_test(tmp_path / 'runs' / 'plus' / 'last.pth')
    assert (args.merge, args.selection, args.readout, args.level_merges, args.round_norm) == \
        ('weighted', 'balanced+scaled', 'root+pool', 'all', 'l2')
    head = model.head
    assert head.readout == 'root+pool' and head.sketch_fusion.level_merges == 'all'
    assert head.sketch_fusion.log_scale is not None and model.sketch_encoder.node_act == 'relu'
    again, *_ = retrieval.evaluate(model, test, torch.device('cpu'), progress=False)
    assert again['acc@1'] == m['acc@1'] and again['mean_rank'] == pytest.approx(m['mean_rank'])
