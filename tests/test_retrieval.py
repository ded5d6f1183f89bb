"""Two-stage retrieval against the full pairwise ranking, the gallery index, single-sketch search."""
import os
import shutil

import numpy as np
import pytest
import torch
from test_train import TINY

import evaluate
import experiment
import main
from head import build_head
from model import CrossModalHierarchy
from retrieval import rank_scores, retrieval_metrics
from search import GalleryIndex, StaleIndexError


def two_stage_model():
    """A head-only model whose features already carry their first-stage embedding ('global')."""
    model = CrossModalHierarchy(None, None, build_head('paper', dim=8, att_dim=4)).double().eval()
    model.first_stage_proj = torch.nn.Identity()
    return model


def random_features(q, g, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    def side(n, width):
        counts = torch.randint(1, width + 1, (n,), generator=gen)
        mask = torch.arange(width)[None] < counts[:, None]
        nodes = torch.rand(n, width, d, generator=gen, dtype=torch.float64) * mask[..., None]
        return {'nodes': nodes, 'mask': mask, 'global': torch.randn(n, 4, generator=gen, dtype=torch.float64)}
    return side(q, 6), side(g, 9)


def test_two_stage_with_the_whole_gallery_is_the_full_ranking():
    torch.manual_seed(0)
    model = two_stage_model()
    s, p = random_features(7, 12)
    targets = torch.arange(7)
    full = rank_scores(model, s, p, rerank=0, chunk=5)
    two = rank_scores(model, s, p, rerank=12, chunk=5)
    assert torch.equal(retrieval_metrics(full, targets)[1], retrieval_metrics(two, targets)[1])
    assert torch.equal(full.argsort(dim=1, stable=True), two.argsort(dim=1, stable=True))


def test_two_stage_reranks_only_the_first_stage_top_m():
    torch.manual_seed(0)
    model = two_stage_model()
    s, p = random_features(5, 10, seed=1)
    m = 3
    scores = rank_scores(model, s, p, rerank=m)
    first = torch.cdist(s['global'], p['global']).argsort(dim=1, stable=True)
    full = rank_scores(model, s, p, rerank=0)
    for q in range(5):
        order = scores[q].argsort(stable=True)
        assert set(order[:m].tolist()) == set(first[q, :m].tolist())            # the head ranks the top M ...
        top = first[q, :m]
        assert order[:m].tolist() == top[full[q, top].argsort(stable=True)].tolist()   # ... by its distance
        assert order[m:].tolist() == first[q, m:].tolist()                     # the rest keep their order


def test_gallery_index_refuses_another_identity(tmp_path):
    feats = {'nodes': torch.rand(3, 4, 5), 'mask': torch.ones(3, 4, dtype=torch.bool)}
    rows = [[n, 100, 7, 4, 5] for n in 'abc']      # name, bytes, mtime_ns, W, H
    GalleryIndex(['a', 'b', 'c'], feats, 'id-1', rows).save(tmp_path / 'index.pt')
    back = GalleryIndex.load(tmp_path / 'index.pt', 'id-1', rows)
    torch.testing.assert_close(back.features['nodes'], feats['nodes'], atol=1e-3, rtol=1e-3)   # float16 on disk
    assert back.names == ['a', 'b', 'c'] and back.features['mask'].dtype == torch.bool
    with pytest.raises(StaleIndexError):
        GalleryIndex.load(tmp_path / 'index.pt', 'id-2', rows)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    data, out = tmp_path_factory.mktemp('data'), tmp_path_factory.mktemp('runs')
    main.main(['--data_root', str(data), *TINY, '--output_dir', str(out), '--run_name', 'r', '--max_steps', '2',
               '--first_stage_dim', '8'])
    return data, out / 'r'


def test_search_a_folder_builds_its_index_once_and_rebuilds_when_a_photo_changes(trained, tmp_path, capsys):
    data, run = trained
    gallery = tmp_path / 'gallery'
    shutil.copytree(data / 'Synthetic' / 'photo', gallery)
    query = tmp_path / 'q.npy'
    np.save(query, np.array([[40, 40, 0], [200, 40, 0], [200, 200, 1], [60, 60, 0], [180, 180, 1]], float))
    argv = ['--checkpoint', str(run / 'last.pth'), '--query', str(query), '--gallery', str(gallery), '--topk', '3']
    first = evaluate.main(argv)
    assert len(first) == 3 and [d for _, d in first] == sorted(d for _, d in first)
    assert 'gallery index' in capsys.readouterr().out
    again = evaluate.main(argv)
    assert 'reused' in capsys.readouterr().out
    assert [n for n, _ in again] == [n for n, _ in first]         # the float16 index ranks alike
    assert [d for _, d in again] == pytest.approx([d for _, d in first], rel=1e-2)
    photo = sorted(gallery.glob('*.png'))[0]          # not the index or box cache beside them
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10 ** 9))
    evaluate.main(argv)
    assert 'rebuilding' in capsys.readouterr().out
    (gallery / '.fgsbir_gallery_index.pt').write_bytes(b'PK\x03\x04 truncated')   # a corrupt cache is rebuilt too
    assert [n for n, _ in evaluate.main(argv)] == [n for n, _ in first]
    assert 'not a readable gallery index; rebuilding' in capsys.readouterr().out
    assert len(list(run.glob('search_q_*.png'))) == 1


def test_search_by_dataset_key_ranks_the_test_gallery(trained, capsys):
    data, run = trained
    import options
    from dataset import build_datasets
    _, test = build_datasets(experiment.data_config(options.parse_args('main', ['--data_root', str(data), *TINY])))
    key = test.query_names[0]
    ranked = evaluate.main(['--checkpoint', str(run / 'last.pth'), '--data_root', str(data), '--query', key,
                            '--topk', '2'])
    assert len(ranked) == 2 and all(name in test.gallery_names for name, _ in ranked)
