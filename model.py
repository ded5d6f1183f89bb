"""The model interface every method implements, and the proposed model of Sain et al., BMVC 2020
(arXiv 2007.15103; equations in docs/method.md).

    images --backbone--> feature map --RoIAlign(boxes), max-pool--> nodes [B, N, D]
    (sketch nodes, photo nodes) --PairHead: co-attention + node fusion, repeated--> one vector per side

Every method (this file and baselines.py) is a `RetrievalModel`: it encodes images to features
(`encode`) and scores (sketch, photo) index pairs with the one distance the triplet loss trains
(`distances`, squared Euclidean). Training calls `forward` (so DistributedDataParallel sees the
step) and evaluation calls `encode` and `distance_matrix`; neither knows which method it runs.
Features are dicts of batch-first tensors, so they can be indexed, concatenated and split alike.
"""
import torch
import torch.nn as nn
from torchvision.ops import roi_align
from tqdm import tqdm

from backbones import build_backbone
from head import build_head


# ----------------------------------------------------------------------------- features
def select(features, idx):
    """Rows `idx` (long [P]) of every tensor of a features dict."""
    return {k: v[idx] for k, v in features.items()}


def concat(parts):
    """Features dicts -> one, rows stacked; dims 1.. (nodes, points) zero-padded to the widest."""
    out = {}
    for k in parts[0]:
        vs = [p[k] for p in parts]
        shape = [max(v.shape[d] for v in vs) for d in range(1, vs[0].dim())]
        out[k] = torch.cat([_pad_to(v, shape) for v in vs])
    return out


def _pad_to(v, shape):
    """Zero-pad (False-pad) dims 1.. of v up to `shape`."""
    pad = []
    for d in reversed(range(1, v.dim())):
        pad += [0, shape[d - 1] - v.shape[d]]
    return nn.functional.pad(v, pad) if any(pad) else v


def split(features, sizes):
    """Inverse of concat for row counts `sizes` (the padding stays)."""
    out = [{} for _ in sizes]
    for k, v in features.items():
        for o, part in zip(out, v.split(list(sizes))):
            o[k] = part
    return out


def batch_inputs(batch, key, device):
    """The inputs of one image set of a collated batch ('sketch', 'positive', 'photo', ...):
    image [B, 3, S, S], boxes [B, N, 4], mask bool [B, N], and where the batch has them points
    [B, L, 3] + points_mask [B, L] (vector sketches) and plan [B, N - 1, 2] (GUI tree merges)."""
    names = {'image': key, 'boxes': f'{key}_boxes', 'mask': f'{key}_mask', 'points': f'{key}_points',
             'points_mask': f'{key}_points_mask', 'plan': f'{key}_plan', 'plan_mask': f'{key}_plan_mask'}
    return {k: batch[v].to(device, non_blocking=True) for k, v in names.items() if v in batch}


def modality(key):
    return 'sketch' if key == 'sketch' else 'photo'


def pair_distance(s, p):
    """Squared Euclidean distance of pair embeddings: [P, D], [P, D] -> [P]. The one distance that
    training (triplet loss) and evaluation (ranking) use."""
    return (s - p).pow(2).sum(1)


# ----------------------------------------------------------------------------- the interface
class RetrievalModel(nn.Module):
    """What training and evaluation call; subclasses implement `encode` and `distances`.

    needs_points: the data layer must give vector sketches ('points'); pairwise: the distance of a
    pair depends on both items (the head must run per pair) rather than on two embeddings.
    """
    needs_points = False
    pairwise = True

    def encode(self, parts):
        """parts: list of (modality 'sketch' | 'photo', inputs dict of batch_inputs).
        Returns one features dict per part."""
        raise NotImplementedError

    def distances(self, s, p, qi, gi):
        """s, p: features of sketches and photos; qi, gi: long [P] row indices.
        Returns [P], the squared distance of each pair (s[qi[k]], p[gi[k]])."""
        raise NotImplementedError

    @property
    def has_first_stage(self):
        """Whether first_stage gives an embedding (two-stage retrieval is possible)."""
        return False

    def first_stage(self, features):
        """A pair-independent embedding [B, E] for the first stage of two-stage retrieval, or None."""
        return None

    def auxiliary_distances(self, s, p, qi, gi):
        """Extra distances [P] that training adds to the loss (e.g. a first-stage branch)."""
        return []

    def forward(self, parts, qi, gi):
        """The training path: encode parts (the first the sketches, the others photos, stacked in
        order) and score the pairs. Returns [distances [P], *auxiliary_distances]."""
        s, *photos = self.encode(parts)
        p = concat(photos) if len(photos) > 1 else photos[0]
        return [self.distances(s, p, qi, gi), *self.auxiliary_distances(s, p, qi, gi)]

    @torch.no_grad()
    def distance_matrix(self, s, p, chunk=2048, rows=None, cols=None, progress=False):
        """[Q, G] distances of every sketch with every photo (or of the given rows [Q, M] of photo
        indices per query: returns [Q, M]), pairs scored `chunk` at a time."""
        q = len(next(iter(s.values())))
        if cols is None:
            g = len(next(iter(p.values())))
            cols = torch.arange(g, device=_device(p)).expand(q, g)
        qi = torch.arange(q, device=cols.device)[:, None].expand_as(cols).reshape(-1)
        gi = cols.reshape(-1)
        out = torch.empty(len(qi), device=cols.device)
        for start in tqdm(range(0, len(qi), chunk), desc='pairs', leave=False, dynamic_ncols=True,
                          disable=not progress):
            a, b = qi[start:start + chunk], gi[start:start + chunk]
            out[start:start + chunk] = self.distances(s, p, a, b).float()
        return out.view(cols.shape)


def _device(features):
    return next(iter(features.values())).device


class PairIndependentModel(RetrievalModel):
    """A method whose sketch and photo embeddings do not depend on each other (the Siamese family):
    distances come from two embeddings, and a whole gallery is one matrix product."""
    pairwise = False

    def distances(self, s, p, qi, gi):
        return pair_distance(s['embedding'][qi], p['embedding'][gi])

    has_first_stage = True

    def first_stage(self, features):
        return features['embedding']

    @torch.no_grad()
    def distance_matrix(self, s, p, chunk=None, rows=None, cols=None, progress=False):
        d = torch.cdist(s['embedding'].float(), p['embedding'].float()).pow(2)
        return d if cols is None else d.gather(1, cols)


# ----------------------------------------------------------------------------- region features
class RegionEncoder(nn.Module):
    """One D-dim vector per box: backbone map, RoIAlign roi_size x roi_size (sampling ratio 2;
    the paper: 7), global max-pool, a linear projection when the backbone's channels differ from
    D, and optionally (node_norm 'l2') unit length per node. Also the whole map's max-pool, for
    a pair-independent first stage."""

    def __init__(self, backbone, channels, dim=512, roi_size=7, node_norm='none'):
        super().__init__()
        self.backbone = backbone
        self.channels = channels
        self.proj = nn.Linear(channels, dim) if channels != dim else nn.Identity()
        self.roi_size = roi_size
        self.node_norm = node_norm

    def forward(self, images, boxes, mask, pooled=False):
        """images: [B, 3, H, W]; boxes: [B, N, 4] x1, y1, x2, y2 in the pixels of `images`;
        mask: bool [B, N] real boxes. Returns nodes [B, N, D], zero where mask is False, and with
        pooled also the map's global max-pool [B, C]."""
        fmap = self.backbone(images)
        # The scale of the actual tensors (e.g. 7/224 for VGG-16), not a nominal stride.
        scale = fmap.shape[-1] / images.shape[-1]
        b, n = mask.shape
        batch_idx = torch.arange(b, device=images.device, dtype=boxes.dtype)[:, None].expand(b, n)
        rois = torch.cat([batch_idx[mask][:, None], boxes[mask]], dim=1)             # [M, 5]
        pooled_rois = roi_align(fmap, rois.to(fmap.dtype), self.roi_size, spatial_scale=scale,
                                sampling_ratio=2, aligned=True)                     # [M, C, r, r]
        feats = self.proj(pooled_rois.amax(dim=(2, 3)))                              # [M, D]
        if self.node_norm == 'l2':
            feats = nn.functional.normalize(feats, dim=1)
        out = feats.new_zeros(b, n, feats.shape[1])
        out[mask] = feats
        return (out, fmap.amax(dim=(2, 3))) if pooled else out


def region_encoders(args):
    """(sketch encoder, photo encoder) of the options: one shared module unless separate_backbones."""
    def encoder():
        return RegionEncoder(*build_backbone(args.backbone, args.pretrained, args.feature_layer),
                             dim=args.dim, roi_size=args.roi_size, node_norm=args.node_norm)
    sketch = encoder()
    return sketch, (encoder() if args.separate_backbones else sketch)


# ----------------------------------------------------------------------------- the model
class CrossModalHierarchy(RetrievalModel):
    """Sketch and photo region encoders (one shared module or two), a pairwise head, and
    optionally a pair-independent first-stage branch (global max-pool, linear, L2) trained
    beside it for two-stage retrieval.

    Features: {'nodes': [B, N, D], 'mask': bool [B, N]} (+ 'global': [B, E] with the branch, and
    'plan': long [B, N - 1, 2] for GUI photos with --hierarchy explicit)."""

    def __init__(self, sketch_encoder, photo_encoder, head, first_stage_dim=0):
        super().__init__()
        self.sketch_encoder = sketch_encoder
        self.photo_encoder = photo_encoder
        self.head = head
        self.first_stage_proj = nn.Linear(sketch_encoder.channels, first_stage_dim) if first_stage_dim else None

    @classmethod
    def from_options(cls, args):
        head = build_head(args.variant, args.dim, args.att_dim, args.method, args.head_init)
        return cls(*region_encoders(args), head, args.first_stage_dim)

    def encode(self, parts):
        """With one shared encoder every part goes through it in ONE call, so batch norm
        normalises sketches and photos with the same mixed statistics that its running averages
        (used at evaluation) hold; with two, each modality's parts go through its own in one call."""
        if self.sketch_encoder is self.photo_encoder:
            groups = {'shared': list(range(len(parts)))}
        else:
            groups = {m: [i for i, (mod, _) in enumerate(parts) if mod == m] for m in ('sketch', 'photo')}
        out = [None] * len(parts)
        for name, idx in groups.items():
            if not idx:
                continue
            encoder = self.photo_encoder if name == 'photo' else self.sketch_encoder
            inputs = concat([{k: parts[i][1][k] for k in ('image', 'boxes', 'mask')} for i in idx])
            nodes, pooled = encoder(inputs['image'], inputs['boxes'], inputs['mask'], pooled=True)
            f = {'nodes': nodes, 'mask': inputs['mask']}
            if self.first_stage_proj is not None:
                f['global'] = nn.functional.normalize(self.first_stage_proj(pooled), dim=1)
            for i, part in zip(idx, split(f, [len(parts[i][1]['image']) for i in idx])):
                if 'plan' in parts[i][1]:       # GUI photos' tree merges (--hierarchy explicit)
                    part['plan'] = parts[i][1]['plan']
                out[i] = part
        return out

    def distances(self, s, p, qi, gi):
        plan = {'p_plan': p['plan'][gi]} if 'plan' in p else {}
        s_out, p_out = self.head(s['nodes'][qi], s['mask'][qi], p['nodes'][gi], p['mask'][gi], **plan)
        return pair_distance(s_out, p_out)

    @property
    def has_first_stage(self):
        return self.first_stage_proj is not None

    def first_stage(self, features):
        return features.get('global')

    def auxiliary_distances(self, s, p, qi, gi):
        if self.first_stage_proj is None:
            return []
        return [pair_distance(s['global'][qi], p['global'][gi])]
