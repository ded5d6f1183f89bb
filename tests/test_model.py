"""Region features, the model interface, and the batched evaluation against simple references."""
import pytest
import torch
import torch.nn as nn

from backbones import build_backbone
from checkpoint import save_checkpoint
from head import build_head
from model import CrossModalHierarchy, RegionEncoder
from retrieval import retrieval_metrics


def test_region_features_follow_boxes_at_the_tensor_scale():
    # Backbone = 4x4 average pooling (stride 4): a bright square must be found by the box
    # that covers it, at any input size, and nowhere else.
    enc = RegionEncoder(nn.AvgPool2d(4), channels=3, dim=3)
    for size in (64, 96):
        img = torch.zeros(1, 3, size, size)
        img[:, :, 16:32, 40:56] = 1.0                       # rows 16-32, columns 40-56
        boxes = torch.tensor([[[40., 16., 56., 32.], [0., 40., 24., 60.], [0., 0., 0., 0.]]])
        mask = torch.tensor([[True, True, False]])
        out = enc(img, boxes, mask)
        assert out.shape == (1, 3, 3)
        assert out[0, 0].min() == pytest.approx(1.0)        # on the square
        assert out[0, 1].max() == pytest.approx(0.0)        # away from it
        assert out[0, 2].abs().max() == 0                   # padding stays zero


def test_region_encoder_batches_match_one_image_at_a_time():
    torch.manual_seed(0)
    backbone, c = build_backbone('resnet18_light', 'none')
    enc = RegionEncoder(backbone, c, dim=32).eval()
    imgs = torch.randn(3, 3, 64, 64)
    boxes = torch.rand(3, 5, 4) * 30
    boxes[..., 2:] += boxes[..., :2] + 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = enc(imgs, boxes, mask)
        for b in range(3):
            n = int(mask[b].sum())
            one = enc(imgs[b:b + 1], boxes[b:b + 1, :n], mask[b:b + 1, :n])
            torch.testing.assert_close(out[b, :n], one[0], atol=1e-5, rtol=1e-4)


def test_distance_matrix_matches_one_pair_at_a_time():
    torch.manual_seed(0)
    head = build_head('paper', dim=16, att_dim=8).eval()
    s = torch.randn(4, 6, 16)
    p = torch.randn(5, 9, 16)
    s_mask = torch.arange(6)[None] < torch.tensor([6, 2, 1, 4])[:, None]
    p_mask = torch.arange(9)[None] < torch.tensor([9, 3, 1, 5, 7])[:, None]
    model = CrossModalHierarchy(None, None, head)
    dist = model.distance_matrix({'nodes': s, 'mask': s_mask}, {'nodes': p, 'mask': p_mask}, chunk=3)
    cols = torch.tensor([[4, 0], [1, 1], [3, 2], [0, 4]])
    some = model.distance_matrix({'nodes': s, 'mask': s_mask}, {'nodes': p, 'mask': p_mask}, chunk=3, cols=cols)
    with torch.no_grad():
        for q in range(4):
            for g in range(5):
                ns, np_ = int(s_mask[q].sum()), int(p_mask[g].sum())
                a, b = head(s[q:q + 1, :ns], s_mask[q:q + 1, :ns], p[g:g + 1, :np_], p_mask[g:g + 1, :np_])
                assert dist[q, g].item() == pytest.approx((a - b).pow(2).sum().item(), abs=1e-4)
    torch.testing.assert_close(some, dist.gather(1, cols))


def test_retrieval_metrics_count_ties_against_the_query():
    dist = torch.tensor([[0.1, 0.5, 0.9],     # true photo 0 first: rank 1
                         [0.3, 0.3, 0.9],     # tie with photo 0: rank 2
                         [0.2, 0.1, 0.05]])   # true photo 0 last: rank 3
    metrics, ranks = retrieval_metrics(dist, torch.tensor([0, 1, 0]))
    assert ranks.tolist() == [1, 2, 3]
    assert metrics['acc@1'] == pytest.approx(1 / 3)
    assert metrics['acc@10'] == pytest.approx(1.0)
    assert metrics['mean_rank'] == pytest.approx(2.0)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / 'last.pth', step=1)
    real_save = torch.save

    def torn(obj, f, *a, **k):          # the process dies in the middle of the write
        real_save(obj, f, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', torn)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / 'last.pth', step=2)
    monkeypatch.undo()
    assert torch.load(tmp_path / 'last.pth')['step'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']      # no temporary file left
