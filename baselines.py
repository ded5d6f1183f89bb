"""The baselines of the paper's Table 1 and Table 2, as classes of one family (model.RetrievalModel):
each is trained by the same loop and evaluated by the same code as the proposed model.

    Siamese          B-Siamese: one backbone on the whole sketch and photo, global pool, L2, fc, L2.
"""
import torch.nn as nn

from backbones import build_backbone
from model import PairIndependentModel, concat, split


def global_embedding(fmap, fc):
    """[B, C, h, w] -> L2(fc(L2(global average pool))) [B, E]."""
    pooled = nn.functional.normalize(fmap.mean(dim=(2, 3)), dim=1)
    return nn.functional.normalize(fc(pooled), dim=1)


class Siamese(PairIndependentModel):
    """B-Siamese (docs/method.md, section 7): one backbone shared by raster sketches and photos,
    global average pool, L2, fc to E, L2. Embeddings do not depend on the pair, so a gallery is
    ranked with one distance matrix. Features: {'embedding': [B, E]}."""

    def __init__(self, backbone, channels, dim=64):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(channels, dim)

    @classmethod
    def from_options(cls, args):
        return cls(*build_backbone(args.backbone, args.pretrained, args.feature_layer), args.dim)

    def encode(self, parts):
        """Every part through the one backbone in one call (batch norm sees both modalities)."""
        images = concat([{'image': inputs['image']} for _, inputs in parts])['image']
        emb = global_embedding(self.backbone(images), self.fc)
        return split({'embedding': emb}, [len(inputs['image']) for _, inputs in parts])
