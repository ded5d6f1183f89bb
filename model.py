"""The model of Sain et al., BMVC 2020: region features, co-attention, hierarchical node fusion.

    images --backbone--> feature map --RoIAlign(boxes), max-pool--> nodes [B, N, D]
    (sketch nodes, photo nodes) --PairHead: co-attention + node fusion, repeated--> one vector per side

The head is pairwise: the sketch's embedding depends on the photo it is compared with.
"""
import os
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torchvision.ops import roi_align

from attention import CoAttention
from hierarchy import NodeFusion, merge_layer, sample_gumbel

# torchvision constructor, weights enum, feature-extractor maker, feature channels.
BACKBONES = {
    'vgg16': (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    'inception_v3': (torchvision.models.inception_v3, torchvision.models.Inception_V3_Weights.IMAGENET1K_V1),
    'resnet18_light': (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
}


class PretrainedWeightsError(RuntimeError):
    pass


def _load_torchvision(name, pretrained):
    """The full torchvision classifier with ImageNet weights ('imagenet'), random ('none') or
    a local state_dict file (PATH, e.g. torchvision's own vgg16-397923af.pth)."""
    ctor, weights = BACKBONES[name]
    extra = {'aux_logits': True, 'init_weights': pretrained == 'none'} if name == 'inception_v3' else {}
    if pretrained == 'imagenet':
        try:
            return ctor(weights=weights, **extra)
        except Exception as e:  # no network, proxy, corrupt cache: say how to get around it
            fname = weights.url.rsplit('/', 1)[-1]
            raise PretrainedWeightsError(
                f'could not get the ImageNet weights of {name} from {weights.url} ({e}). Download '
                f'{fname} on a machine with internet and pass --pretrained /path/to/{fname}, '
                f'or pass --pretrained none to start from random initialisation.') from None
    model = ctor(weights=None, **extra)
    if pretrained != 'none':
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(f'--pretrained {pretrained}: no such file (expected imagenet, '
                                         f'none or the path of a torchvision {name} state_dict)')
        state = torch.load(path, map_location='cpu', weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise PretrainedWeightsError(f'{path} is not a torchvision {name} state_dict: '
                                         f'{str(e).splitlines()[0]} ...') from None
    return model


def build_backbone(name, pretrained='none'):
    """A fully convolutional feature extractor [B, 3, H, W] -> [B, C, h, w] and its C.

    vgg16: .features, C = 512, stride 32 (the paper). inception_v3: up to Mixed_7c, C = 2048.
    resnet18_light: ResNet-18 up to layer3, C = 256, stride 16: about 1/8 of VGG-16's cost at
    the same input, with batch norm so that it trains from scratch, which is what a 2-core CPU
    without ImageNet weights can afford for the embedded dataset.
    """
    if name not in BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; expected one of {sorted(BACKBONES)}')
    net = _load_torchvision(name, pretrained)
    if name == 'vgg16':
        return net.features, 512
    if name == 'inception_v3':
        parts = ['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'maxpool1', 'Conv2d_3b_1x1',
                 'Conv2d_4a_3x3', 'maxpool2', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
                 'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c']
        return nn.Sequential(*[getattr(net, p) for p in parts]), 2048
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3), 256


class RegionEncoder(nn.Module):
    """One D-dim vector per box: backbone map, RoIAlign roi_size x roi_size (sampling ratio 2;
    the paper: 7), global max-pool, a linear projection when the backbone's channels differ from
    D, and optionally (node_norm 'l2') unit length per node."""

    def __init__(self, backbone, channels, dim=512, roi_size=7, node_norm='none'):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(channels, dim) if channels != dim else nn.Identity()
        self.roi_size = roi_size
        self.node_norm = node_norm

    def forward(self, images, boxes, mask):
        """images: [B, 3, H, W]; boxes: [B, N, 4] x1, y1, x2, y2 in the pixels of `images`;
        mask: bool [B, N] real boxes. Returns nodes [B, N, D], zero where mask is False."""
        fmap = self.backbone(images)
        # The scale of the actual tensors (e.g. 7/224 for VGG-16), not a nominal stride.
        scale = fmap.shape[-1] / images.shape[-1]
        b, n = mask.shape
        batch_idx = torch.arange(b, device=images.device, dtype=boxes.dtype)[:, None].expand(b, n)
        rois = torch.cat([batch_idx[mask][:, None], boxes[mask]], dim=1)             # [M, 5]
        pooled = roi_align(fmap, rois.to(fmap.dtype), self.roi_size, spatial_scale=scale,
                           sampling_ratio=2, aligned=True)                          # [M, C, r, r]
        feats = self.proj(pooled.amax(dim=(2, 3)))                                   # [M, D]
        if self.node_norm == 'l2':
            feats = nn.functional.normalize(feats, dim=1)
        out = feats.new_zeros(b, n, feats.shape[1])
        out[mask] = feats
        return out


class PairHead(nn.Module):
    """The loop of SPEC section 5 for a batch of (sketch, photo) pairs with different node counts.

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
            out = (_masked_max(s, s_mask), _masked_max(p, p_mask))
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


def _masked_max(x, mask):
    """x: [B, N, D], mask: bool [B, N] -> [B, D] max over the real nodes."""
    return x.masked_fill(~mask[..., None], float('-inf')).amax(dim=1)


VARIANTS = {
    # gate, compatibility, ReLU after merge, one merge layer shared by both branches
    'paper': dict(gate='learned', compatibility='projected', relu=True, shared_merge=False),
    'released': dict(gate='product', compatibility='dot', relu=False, shared_merge=True),
}


def build_head(variant='paper', dim=512, att_dim=128, method='hierarchy', init='identity'):
    """The pairwise head. variant: 'paper' or 'released' (the authors' pre-Sep-2020 code);
    method: 'hierarchy' (proposed), 'localised_coattn' (w/o Hierarchy), 'no_coattn';
    init: 'identity' (merges start as means, co-attention updates start small; ours, the paper
    does not say) or 'default' (PyTorch's, as the authors' code)."""
    if variant not in VARIANTS:
        raise ValueError(f'unknown variant {variant!r}; expected one of {sorted(VARIANTS)}')
    v = VARIANTS[variant]
    if method == 'localised_coattn':   # SPEC section 9: one round with the learned gate
        return PairHead(CoAttention(dim, att_dim, 'learned', init), None, None)
    if method not in ('hierarchy', 'no_coattn'):
        raise ValueError(f'unknown method {method!r}')
    coattention = None if method == 'no_coattn' else CoAttention(dim, att_dim, v['gate'], init)
    merge_s = merge_layer(dim, v['relu'], init)
    merge_p = merge_s if v['shared_merge'] else merge_layer(dim, v['relu'], init)
    return PairHead(coattention,
                    NodeFusion(merge_s, dim, v['compatibility'], att_dim),
                    NodeFusion(merge_p, dim, v['compatibility'], att_dim))


class CrossModalHierarchy(nn.Module):
    """Sketch and photo region encoders (one shared module or two) and the pairwise head."""

    def __init__(self, sketch_encoder, photo_encoder, head):
        super().__init__()
        self.sketch_encoder = sketch_encoder
        self.photo_encoder = photo_encoder
        self.head = head

    def forward(self, sketch, sketch_boxes, sketch_mask, photo, photo_boxes, photo_mask):
        """sketch, photo: [B, 3, H, W]; *_boxes: [B, N, 4]; *_mask: bool [B, N].
        Returns the pair embeddings (s [B, D], p [B, D])."""
        s = self.sketch_encoder(sketch, sketch_boxes, sketch_mask)
        p = self.photo_encoder(photo, photo_boxes, photo_mask)
        return self.head(s, sketch_mask, p, photo_mask)


def build_model(args):
    """The model an options Namespace describes (see options.py)."""
    def encoder():
        return RegionEncoder(*build_backbone(args.backbone, args.pretrained), dim=args.dim,
                             roi_size=args.roi_size, node_norm=args.node_norm)
    sketch_encoder = encoder()
    photo_encoder = encoder() if args.separate_backbones else sketch_encoder
    head = build_head(args.variant, args.dim, args.att_dim, args.method, args.head_init)
    return CrossModalHierarchy(sketch_encoder, photo_encoder, head)


def pair_distance(s, p):
    """Squared Euclidean distance of pair embeddings: [B, D], [B, D] -> [B]."""
    return (s - p).pow(2).sum(1)


def triplet_loss(d_pos, d_neg, margin=0.2):
    """mean max(0, margin + D(S+, P+) - D(S-, P-)) over triplets (SPEC section 6); d_pos, d_neg:
    [T] pair distances (pair_distance) of each triplet's positive and negative pair."""
    return torch.relu(margin + d_pos - d_neg).mean()


def save_checkpoint(path, **state):
    """torch.save to a temporary file, then rename: an interrupted write never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    torch.save(state, tmp)
    os.replace(tmp, path)
