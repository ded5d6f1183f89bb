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
import hashlib

import torch
import torch.nn as nn
from torchvision.ops import roi_align
from tqdm import tqdm

from fast_eval import eval_pairs
from head import PairHead, build_head, full_precision


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
    [B, L, 3] + points_mask [B, L] (vector sketches), plan [B, N - 1, 2] (GUI tree merges) and
    keys, a list of B image keys (dataset.image_key: what a frozen trunk's features are cached by)."""
    names = {'image': key, 'boxes': f'{key}_boxes', 'mask': f'{key}_mask', 'points': f'{key}_points',
             'points_mask': f'{key}_points_mask', 'plan': f'{key}_plan'}
    out = {k: batch[v].to(device, non_blocking=True) for k, v in names.items() if v in batch}
    if f'{key}_key' in batch:
        out['keys'] = list(batch[f'{key}_key'])
    return out


def box_key(boxes):
    """A digest of an image's boxes [n, 4]: with the image's key, the key of its cached regions."""
    return hashlib.blake2b(boxes.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=8).hexdigest()


def joined_keys(inputs):
    """The image keys of several inputs dicts in order, or None unless every one has them."""
    if not all('keys' in x for x in inputs):
        return None
    return [k for x in inputs for k in x['keys']]


def modality(key):
    return 'sketch' if key == 'sketch' else 'photo'


def pair_distance(s, p):
    """Squared Euclidean distance of pair embeddings: [P, D], [P, D] -> [P]. The one distance that
    training (triplet loss) and evaluation (ranking) use; in float32 under --amp too (the
    difference of two close bf16 vectors has few bits left)."""
    with torch.autocast(s.device.type, enabled=False):
        return (full_precision(s) - full_precision(p)).pow(2).sum(1)


# ----------------------------------------------------------------------------- the interface
class RetrievalModel(nn.Module):
    """What training and evaluation call; subclasses implement `encode` and `distances`.

    needs_points: the data layer must give vector sketches ('points'); pairwise: the distance of a
    pair depends on both items (the head must run per pair) rather than on two embeddings.
    """
    needs_points = False
    pairwise = True
    # Set under DistributedDataParallel (main.py): every trained parameter then takes part in each
    # step's graph (see forward), as DDP's gradient reduction requires.
    every_parameter = False

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

    def training_distances(self, s, p, qi, gi):
        """The distances the training loss is made of: {'pairs': [P] (the ranking distance),
        'first_stage': [P] (a first-stage branch), 'levels': [R, P] (one row per fusion level),
        ...}; the trainer applies the triplet loss to each (train.train_step)."""
        return {'pairs': self.distances(s, p, qi, gi)}

    def diagnostics(self, s, p):
        """Figures about the model on the pairs (s[k], p[k]) that the trainer logs at every
        evaluation (a dict of floats; none by default)."""
        return {}

    def forward(self, parts, qi, gi):
        """The training path: encode parts (the first the sketches, the others photos, stacked in
        order) and score the pairs. Returns training_distances."""
        s, *photos = self.encode(parts)
        p = concat(photos) if len(photos) > 1 else photos[0]
        out = self.training_distances(s, p, qi, gi)
        if self.every_parameter:
            # Some parameters get no gradient in some steps: the compatibility under the forced
            # merges of --hierarchy explicit, a side's fusion when a share's sketches are all one
            # node, the whole head at --num_regions 1. DDP waits for every parameter's gradient,
            # so each one joins the graph with weight 0 (one element of each; its gradient is 0,
            # and the other ranks' gradients still arrive through the all-reduce).
            touched = torch.cat([q.view(-1)[:1] for q in self.parameters() if q.requires_grad])
            out['pairs'] = out['pairs'] + 0 * touched.sum()
        return out

    @torch.no_grad()
    def distance_matrix(self, s, p, chunk=2048, rows=None, cols=None, progress=False):
        """[Q, G] distances of every sketch with every photo (or of the given rows [Q, M] of photo
        indices per query: returns [Q, M]), pairs scored `chunk` at a time (on a GPU at least as
        many as fit: fast_eval.eval_pairs)."""
        q = len(next(iter(s.values())))
        nodes = s.get('nodes')
        if nodes is not None and nodes.device.type == 'cuda':
            chunk = max(chunk, eval_pairs(nodes.device, max(nodes.shape[1], p['nodes'].shape[1]), nodes.shape[2]))
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
NODE_ACTS = ('none', 'relu')


class RegionEncoder(nn.Module):
    """One D-dim vector per box: backbone map, RoIAlign roi_size x roi_size (sampling ratio 2;
    the paper: 7), global max-pool, a linear projection when the backbone's channels differ from
    D, optionally (node_act 'relu') a ReLU after it, and optionally (node_norm 'l2') unit length
    per node. Also the whole map's max-pool, for a pair-independent first stage.

    With the whole backbone frozen and a feature cache (feature_cache.attach), an image's pooled
    regions and global pool are computed once (keyed by its pixels, boxes and roi_size); with part
    of it frozen, the backbone caches its frozen stages' map (backbones.FeatureExtractor)."""

    def __init__(self, backbone, channels, dim=512, roi_size=7, node_norm='none', node_act='none'):
        super().__init__()
        if node_act not in NODE_ACTS:
            raise ValueError(f'unknown node_act {node_act!r}; expected one of {NODE_ACTS}')
        self.backbone = backbone
        self.channels = channels
        self.proj = nn.Linear(channels, dim) if channels != dim else nn.Identity()
        self.roi_size = roi_size
        self.node_norm = node_norm
        self.node_act = node_act

    def forward(self, images, boxes, mask, pooled=False, keys=None):
        """images: [B, 3, H, W]; boxes: [B, N, 4] x1, y1, x2, y2 in the pixels of `images`;
        mask: bool [B, N] real boxes; keys: the images' keys for a frozen trunk's cache, or None.
        Returns nodes [B, N, D], zero where mask is False, and with pooled also the map's global
        max-pool [B, C]."""
        cache = getattr(self.backbone, 'cache', None)
        if keys is not None and cache is not None and self.backbone.frozen == self.backbone.stages:
            # The whole backbone is frozen: cache each image's pooled regions and global pool.
            box_keys = [f'{k}|{box_key(boxes[i, mask[i]])}|roi{self.roi_size}' for i, k in enumerate(keys)]
            rows = cache.get(box_keys, lambda idx: self._pool(self.backbone(images[idx]), images.shape[-1],
                                                              boxes[idx], mask[idx], split=True))
            rows = [r.to(images.device) for r in rows]
            regions = torch.stack([nn.functional.pad(r[1:], (0, 0, 0, mask.shape[1] + 1 - len(r))) for r in rows])
            global_pool = torch.stack([r[0] for r in rows])
        else:
            fmap = self.backbone(images) if keys is None else self.backbone(images, keys)
            regions, global_pool = self._pool(fmap, images.shape[-1], boxes, mask)
        feats = self.proj(regions)                                                   # [B, N, D]
        if self.node_act == 'relu':     # non-negative nodes, as VGG-16's pooled features are
            feats = torch.relu(feats)
        if self.node_norm == 'l2':
            feats = nn.functional.normalize(feats, dim=-1)
        out = feats.masked_fill(~mask[..., None], 0)
        return (out, global_pool) if pooled else out

    def _pool(self, fmap, size, boxes, mask, split=False):
        """fmap: [B, C, h, w] of images `size` pixels wide -> (regions [B, N, C]: RoIAlign of every
        box slot, max-pooled (padded slots hold finite values, masked later); the map's global
        max-pool [B, C]); with split, per image [1 + n_i, C] (global pool, then its real regions).
        Every slot is pooled, so that no boolean mask makes the host wait for the device; RoIAlign
        runs in float32 under --amp too (bf16 would round the batch index above 256 and the box
        coordinates to whole pixels in [128, 256): another image's or another place's region)."""
        # The scale of the actual tensors (e.g. 7/224 for VGG-16), not a nominal stride.
        scale = fmap.shape[-1] / size
        b, n = mask.shape
        batch_idx = torch.arange(b, device=boxes.device, dtype=torch.float32)[:, None, None].expand(b, n, 1)
        rois = torch.cat([batch_idx, boxes.float()], dim=2).view(b * n, 5)         # [B * N, 5]
        with torch.autocast(fmap.device.type, enabled=False):
            pooled_rois = roi_align(fmap.float(), rois, self.roi_size, spatial_scale=scale,
                                    sampling_ratio=2, aligned=True)                 # [B * N, C, r, r]
        regions, global_pool = pooled_rois.amax(dim=(2, 3)).view(b, n, -1), fmap.amax(dim=(2, 3))
        if not split:
            return regions, global_pool
        return [torch.cat([g[None], r[:k]]) for g, r, k in zip(global_pool, regions, mask.sum(1).tolist())]


def region_encoders(config, backbone):
    """(sketch encoder, photo encoder) of a methods.ModelConfig, each on a fresh backbone()
    (-> (net, channels)): one shared module unless separate_backbones."""
    def encoder():
        return RegionEncoder(*backbone(), dim=config.dim, roi_size=config.roi_size, node_norm=config.node_norm,
                             node_act=config.node_act)
    sketch = encoder()
    return sketch, (encoder() if config.separate_backbones else sketch)


# ----------------------------------------------------------------------------- the model
class CrossModalHierarchy(RetrievalModel):
    """Sketch and photo region encoders (one shared module or two), a pairwise head, and
    optionally a pair-independent first-stage branch (global max-pool, linear, L2) trained
    beside it for two-stage retrieval.

    Features: {'nodes': [B, N, D], 'mask': bool [B, N]} (+ 'global': [B, E] with the branch, and
    'plan': long [B, N - 1, 2] for GUI photos with --hierarchy explicit)."""

    def __init__(self, sketch_encoder, photo_encoder, head, first_stage_dim=0, level_loss=False):
        super().__init__()
        self.sketch_encoder = sketch_encoder
        self.photo_encoder = photo_encoder
        self.head = head
        self.first_stage_proj = nn.Linear(sketch_encoder.channels, first_stage_dim) if first_stage_dim else None
        self.level_loss = level_loss

    @classmethod
    def from_config(cls, c, backbone, **layout):
        """c: a methods.ModelConfig; backbone() -> (net, channels); layout: the head's layout of the
        method's row (build_head's coattention, fusion, gate)."""
        head = build_head(c.variant, c.dim, c.att_dim, c.head_init, merge=c.merge, merge_act=c.merge_act,
                          selection=c.selection, readout=c.readout, round_norm=c.round_norm,
                          level_merges=c.level_merges, **layout)
        return cls(*region_encoders(c, backbone), head, c.first_stage_dim, c.level_loss)

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
            keys = joined_keys([parts[i][1] for i in idx])
            nodes, pooled = encoder(inputs['image'], inputs['boxes'], inputs['mask'], pooled=True, keys=keys)
            f = {'nodes': nodes, 'mask': inputs['mask']}
            if self.first_stage_proj is not None:
                f['global'] = nn.functional.normalize(self.first_stage_proj(pooled), dim=1)
            for i, part in zip(idx, split(f, [len(parts[i][1]['image']) for i in idx])):
                if 'plan' in parts[i][1]:       # GUI photos' tree merges (--hierarchy explicit)
                    part['plan'] = parts[i][1]['plan']
                out[i] = part
        return out

    def distances(self, s, p, qi, gi, levels=None):
        """levels: a list that receives, per fusion level, the distances [P] of the pairs' L2
        max-pooled nodes after that level (the level loss)."""
        extra = {'p_plan': p['plan'][gi]} if 'plan' in p else {}
        if levels is not None:
            extra['levels'] = pooled = []
        s_out, p_out = self.head(s['nodes'][qi], s['mask'][qi], p['nodes'][gi], p['mask'][gi], **extra)
        if levels is not None:
            levels += [pair_distance(a, b) for a, b in pooled]
        return pair_distance(s_out, p_out)

    def training_distances(self, s, p, qi, gi):
        """{'pairs': [P]} and, with a first stage, 'first_stage': [P]; with the level loss,
        'levels': [R, P] (the distances after each of the R fusion levels of the batch)."""
        levels = [] if self.level_loss else None
        out = {'pairs': self.distances(s, p, qi, gi, levels)}
        if self.first_stage_proj is not None:
            out['first_stage'] = pair_distance(s['global'][qi], p['global'][gi])
        if levels:
            out['levels'] = torch.stack(levels)
        return out

    def diagnostics(self, s, p):
        """The head's greedy trees on the pairs (s[k], p[k]) (head.PairHead.trees) and the share of
        training merges since the last call that equalled the greedy pick."""
        if not isinstance(self.head, PairHead):
            return {}
        return {**self.head.trees(s['nodes'], s['mask'], p['nodes'], p['mask']), **self.head.merge_agreement()}

    @property
    def has_first_stage(self):
        return self.first_stage_proj is not None

    def first_stage(self, features):
        return features.get('global')

