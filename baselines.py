"""The baselines of the paper's Tables 1 and 2 (docs/method.md, section 7), as classes of one
family (model.RetrievalModel): each is trained by the same loop and evaluated by the same code as
the proposed model, and each takes --backbone and --pretrained like it.

    GlobalEmbedding   pair-independent: whole image -> backbone -> global pool -> fc -> L2.
                      B-Siamese (one shared backbone), SWIRE (a backbone per modality),
                      Triplet-SN (Sketch-a-Net branches, edge-map photos), Triplet-Attn-SN
                      (+ spatial attention with a shortcut).
    GatedSiamese      B-Gated-Siamese: a matching gate between the two branches' feature maps
                      makes the embedding pair-dependent.
    DiffPoolHead      B-Graph-Hierarchy: soft, learned cluster pooling of the nodes (DiffPool)
                      level by level, with co-attention, in place of discrete pair fusion.
    VectorSketch      SketchBERT-Variant (a Transformer over the (x, y, pen) sketch) and
                      SketchFormer-Variant (the same, joined with the raster sketch's features).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import CoAttention
from model import (CrossModalHierarchy, PairIndependentModel, RetrievalModel, joined_keys, pair_distance,
                   region_encoders)


def shared_call(net, parts, key='image'):
    """One network (a backbones.FeatureExtractor) on every part's `key` input in ONE call (batch
    norm sees both modalities), with the images' keys for a frozen trunk's cache; returns the
    outputs split back per part."""
    x = torch.cat([inputs[key] for _, inputs in parts])
    keys = joined_keys([inputs for _, inputs in parts])
    return (net(x) if keys is None else net(x, keys)).split([len(inputs[key]) for _, inputs in parts])


def per_modality_call(nets, parts, key='image'):
    """nets: {'sketch': net, 'photo': net}; each modality's parts in one call of its net."""
    out = [None] * len(parts)
    for name, net in nets.items():
        idx = [i for i, (m, _) in enumerate(parts) if m == name]
        if idx:
            for i, y in zip(idx, shared_call(net, [parts[i] for i in idx], key)):
                out[i] = y
    return out


# ----------------------------------------------------------------------------- global embeddings
class SpatialAttention(nn.Module):
    """Triplet-Attn-SN's attention (Song et al., ICCV 2017): a spatial mask from two 1x1
    convolutions, softmax over positions (scaled to mean 1), and a shortcut: f + f * a."""

    def __init__(self, channels, hidden=256):
        super().__init__()
        self.score = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    def forward(self, f):
        b, _, h, w = f.shape
        a = torch.softmax(self.score(f).view(b, 1, h * w), dim=2).view(b, 1, h, w) * (h * w)
        return f + f * a


class GlobalEmbedding(PairIndependentModel):
    """Whole image -> backbone map [B, C, h, w] -> (attention) -> global average pool -> L2 ->
    fc to E -> L2. Features: {'embedding': [B, E]}. With one backbone for both modalities
    (sketch_net is photo_net) every part goes through it in one call; SWIRE gives each modality
    its own backbone and fc."""

    def __init__(self, sketch_net, photo_net, channels, dim=64, attention=False):
        super().__init__()
        self.sketch_net, self.photo_net = sketch_net, photo_net
        self.shared = sketch_net is photo_net
        self.sketch_fc = nn.Linear(channels, dim)
        self.photo_fc = self.sketch_fc if self.shared else nn.Linear(channels, dim)
        self.attention = SpatialAttention(channels) if attention else None

    @classmethod
    def from_config(cls, c, backbone, attention=False):
        """c: a methods.ModelConfig; backbone() -> (net, channels), a fresh one per call."""
        net, channels = backbone()
        other = backbone()[0] if c.separate_backbones else net
        return cls(net, other, channels, c.dim, attention)

    def embed(self, fmap, fc):
        if self.attention is not None:
            fmap = self.attention(fmap)
        return F.normalize(fc(F.normalize(fmap.mean(dim=(2, 3)), dim=1)), dim=1)

    def encode(self, parts):
        if self.shared:
            maps = shared_call(self.sketch_net, parts)
        else:
            maps = per_modality_call({'sketch': self.sketch_net, 'photo': self.photo_net}, parts)
        return [{'embedding': self.embed(f, self.sketch_fc if m == 'sketch' else self.photo_fc)}
                for f, (m, _) in zip(maps, parts)]


class AttentionEmbedding(GlobalEmbedding):
    """Triplet-Attn-SN: GlobalEmbedding with spatial attention and a shortcut."""

    @classmethod
    def from_config(cls, c, backbone):
        return super().from_config(c, backbone, attention=True)


# ----------------------------------------------------------------------------- gated siamese
class GatedSiamese(RetrievalModel):
    """B-Gated-Siamese, after Varior et al. (ECCV 2016): a matching gate compares the two
    branches' local features position by position and boosts the similar ones,
    f' = f + f * g with g = exp(-||f_s - f_p||^2 / (2 sigma^2)) on unit-length local features
    (sigma learned). Varior et al. gate a middle layer; here the gate acts on the backbone's
    last map, so a gallery's maps are computed once and only the gate, the pool and the fc run
    per pair. Features: {'map': [B, C, h, w]}."""

    def __init__(self, net, channels, dim=64):
        super().__init__()
        self.net = net
        self.fc = nn.Linear(channels, dim)
        self.log_sigma = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_config(cls, c, backbone):
        return cls(*backbone(), c.dim)

    def encode(self, parts):
        return [{'map': f} for f in shared_call(self.net, parts)]

    def distances(self, s, p, qi, gi):
        fs, fp = s['map'][qi], p['map'][gi]
        d2 = (F.normalize(fs, dim=1) - F.normalize(fp, dim=1)).pow(2).sum(1, keepdim=True)   # [P, 1, h, w]
        g = torch.exp(-d2 / (2 * torch.exp(2 * self.log_sigma)))
        emb = [F.normalize(self.fc(F.normalize((f + f * g).mean(dim=(2, 3)), dim=1)), dim=1) for f in (fs, fp)]
        return pair_distance(*emb)


# ----------------------------------------------------------------------------- graph hierarchy
def masked_softmax(logits, mask, dim):
    return torch.softmax(logits.masked_fill(~mask, float('-inf')), dim=dim)


class DiffPool(nn.Module):
    """One DiffPool level (Ying et al., NeurIPS 2018) on a masked node set: a graph from the
    nodes' projected similarities, one message-passing step, a soft assignment of every node to
    `c` clusters, and each cluster the assignment-weighted mean of the nodes. Starts close to
    plain means (the message passing is scaled down at init, like the proposed head's start)."""

    def __init__(self, dim, att_dim, clusters):
        super().__init__()
        self.clusters = clusters
        self.key = nn.Linear(dim, att_dim, bias=False)
        self.message = nn.Linear(dim, dim)
        self.assign = nn.Linear(dim, clusters)
        with torch.no_grad():
            self.message.weight.mul_(0.1)
            self.message.bias.mul_(0.1)

    def forward(self, x, mask):
        """x: [B, N, D], mask: bool [B, N] -> ([B, c, D], mask [B, c] all True)."""
        k = self.key(x)
        adj = masked_softmax(torch.bmm(k, k.transpose(1, 2)) / math.sqrt(k.shape[-1]), mask[:, None, :], 2)
        z = x + torch.relu(self.message(torch.bmm(adj, x)))
        s = torch.softmax(self.assign(z), dim=2) * mask[..., None]                 # [B, N, c]
        pooled = torch.bmm(s.transpose(1, 2), z) / s.sum(1)[..., None].clamp_min(1e-6)
        return pooled, torch.ones(pooled.shape[:2], dtype=torch.bool, device=x.device)


class DiffPoolHead(nn.Module):
    """B-Graph-Hierarchy's head: per level, co-attention between the two node sets, then each
    side pooled to the level's cluster count (8, 4, 2, 1 by default); the last level's single
    node of each side is the pair embedding. Same call as head.PairHead."""

    def __init__(self, dim, att_dim=128, levels=(8, 4, 2, 1), init='identity'):
        super().__init__()
        self.coattention = nn.ModuleList(CoAttention(dim, att_dim, 'learned', init) for _ in levels)
        self.sketch_pool = nn.ModuleList(DiffPool(dim, att_dim, c) for c in levels)
        self.photo_pool = nn.ModuleList(DiffPool(dim, att_dim, c) for c in levels)

    def forward(self, s, s_mask, p, p_mask):
        for co, pool_s, pool_p in zip(self.coattention, self.sketch_pool, self.photo_pool):
            s, p = co(s, s_mask, p, p_mask)
            (s, s_mask), (p, p_mask) = pool_s(s, s_mask), pool_p(p, p_mask)
        return s[:, 0], p[:, 0]


class GraphHierarchy(CrossModalHierarchy):
    """B-Graph-Hierarchy: the proposed model's region encoders with DiffPoolHead."""

    @classmethod
    def from_config(cls, c, backbone):
        return cls(*region_encoders(c, backbone), DiffPoolHead(c.dim, c.att_dim, init=c.head_init), c.first_stage_dim)


# ----------------------------------------------------------------------------- vector sketches
def sinusoidal(length, dim, device):
    """[length, dim] sine / cosine position codes (Vaswani et al., 2017)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[:dim // 2])
    return pe


class StrokeTransformer(nn.Module):
    """The vector sketch as a sequence: (x, y, pen) -> Linear to d + sine positions -> a 2-layer
    Transformer encoder (4 heads) -> max over the real points -> [B, d]."""

    def __init__(self, width=768, layers=2, heads=4):
        super().__init__()
        self.embed = nn.Linear(3, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, points, mask):
        """points: [B, L, 3], mask: bool [B, L] real points -> [B, d]."""
        x = self.embed(points) + sinusoidal(points.shape[1], self.embed.out_features, points.device)
        x = self.encoder(x, src_key_padding_mask=~mask)
        return x.masked_fill(~mask[..., None], float('-inf')).amax(dim=1)


class VectorSketch(PairIndependentModel):
    """SketchBERT-Variant (raster=False): sketch = StrokeTransformer -> batch norm -> fc to E -> L2.
    SketchFormer-Variant (raster=True): [StrokeTransformer -> batch norm ; the raster sketch's pooled backbone
    features] -> MLP (-> 512 -> E) -> L2. Photos: backbone -> global pool -> fc to E -> L2.
    Features: {'embedding': [B, E]}."""
    needs_points = True

    def __init__(self, net, channels, dim=64, width=768, raster=False):
        super().__init__()
        self.net, self.raster = net, raster
        self.transformer = StrokeTransformer(width)
        # The pooled Transformer outputs of all sketches share one large component (mean cosine
        # 0.997 between sketches at init): centred by batch norm, the embedding is made of what
        # differs between sketches, and it no longer collapses to one vector in training. Running
        # statistics are the plain average over the steps (momentum None): right after a few steps.
        self.seq_norm = nn.BatchNorm1d(width, momentum=None)
        self.photo_fc = nn.Linear(channels, dim)
        self.sketch_head = (nn.Sequential(nn.Linear(width + channels, 512), nn.ReLU(inplace=True), nn.Linear(512, dim))
                            if raster else nn.Linear(width, dim))

    @classmethod
    def from_config(cls, c, backbone, raster=False):
        return cls(*backbone(), c.dim, c.seq_dim, raster)

    def encode(self, parts):
        images = [(m, inputs) for m, inputs in parts if m == 'photo' or self.raster]
        pooled = iter(F.normalize(f.mean(dim=(2, 3)), dim=1) for f in shared_call(self.net, images)) if images else None
        out = []
        for m, inputs in parts:
            if m == 'photo':
                e = self.photo_fc(next(pooled))
            else:
                seq = self.transformer(inputs['points'], inputs['points_mask'])
                # A training batch of one sketch has no batch statistics: use the running ones.
                seq = self.seq_norm(seq) if len(seq) > 1 or not self.training else F.batch_norm(
                    seq, self.seq_norm.running_mean, self.seq_norm.running_var, self.seq_norm.weight,
                    self.seq_norm.bias, eps=self.seq_norm.eps)
                e = self.sketch_head(torch.cat([seq, next(pooled)], dim=1) if self.raster else seq)
            out.append({'embedding': F.normalize(e, dim=1)})
        return out


class RasterVectorSketch(VectorSketch):
    """SketchFormer-Variant: VectorSketch with the raster branch."""

    @classmethod
    def from_config(cls, c, backbone):
        return super().from_config(c, backbone, raster=True)

