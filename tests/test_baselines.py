"""Every method of methods.METHODS trains and evaluates through main.py's path on a tiny generated
dataset; the baselines' building blocks against simple references."""
import math

import pytest
import torch

import main
from baselines import DiffPool, GatedSiamese, SpatialAttention, StrokeTransformer
from methods import METHODS
from test_train import TINY


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


# Sketch-a-Net's 15x15/3 first layer and three poolings need ~100 px; the Transformer runs narrow.
EXTRA = {'triplet_sn': ['--image_size', '128'], 'triplet_attn_sn': ['--image_size', '128'],
         'sketchbert': ['--seq_dim', '32'], 'sketchformer': ['--seq_dim', '32']}


@pytest.mark.parametrize('method', list(METHODS))
def test_every_method_trains_and_evaluates(method, data_root, tmp_path):
    m = main.main(['--data_root', str(data_root), *TINY, '--output_dir', str(tmp_path), '--method', method,
                   '--max_steps', '2', *EXTRA.get(method, [])])
    assert math.isfinite(m['acc@1']) and math.isfinite(m['acc@10']) and 1 <= m['mean_rank'] <= 3
    assert m['nonfinite'] == 0


def test_spatial_attention_is_a_shortcut_around_a_mean_one_mask():
    att = SpatialAttention(4, hidden=3)
    f = torch.rand(2, 4, 5, 6)
    a = (att(f) - f) / f                                       # the mask, position by position
    torch.testing.assert_close(a.mean(dim=(2, 3)), torch.ones(2, 4))
    torch.testing.assert_close(a[:, 0], a[:, 3])               # one mask for all channels


def test_gated_siamese_gate_is_one_for_identical_maps():
    torch.manual_seed(0)
    model = GatedSiamese(torch.nn.Identity(), channels=4, dim=3)
    f = torch.rand(3, 4, 2, 2)
    d = model.distances({'map': f}, {'map': f}, torch.arange(3), torch.arange(3))
    torch.testing.assert_close(d, torch.zeros(3))             # f' = 2 f on both sides
    g = torch.rand(3, 4, 2, 2)
    assert (model.distances({'map': f}, {'map': g}, torch.arange(3), torch.arange(3)) > 0).all()


def test_diffpool_ignores_padding_and_pools_to_its_clusters():
    torch.manual_seed(0)
    pool = DiffPool(dim=8, att_dim=4, clusters=3)
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    y, m = pool(x, mask)
    x2 = x.clone()
    x2[0, 3:] = 100.0                                          # padding must not matter
    y2, _ = pool(x2, mask)
    assert y.shape == (1, 3, 8) and m.all()
    torch.testing.assert_close(y, y2)


def test_stroke_transformer_ignores_padded_points():
    torch.manual_seed(0)
    t = StrokeTransformer(width=16).eval()
    pts = torch.rand(2, 7, 3)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        out = t(pts, mask)
        alone = t(pts[1:, :4], mask[1:, :4])
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=1e-5)
