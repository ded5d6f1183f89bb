"""The triplet loss on pair distances and its negative-mining modes (arXiv 2007.15103;
docs/method.md, (M8)-(M9)).

A `TripletLoss` says which (sketch, photo) pairs a batch needs (`photo_keys`, `pairs`) and turns
their distances into the loss, so the training step works for any method and any mode.
"""
import torch
import torch.nn as nn

NEGATIVES = ('sampled', 'batch', 'batch_hard')


def triplet_loss(d_pos, d_neg, margin=0.2):
    """mean max(0, margin + D(S+, P+) - D(S-, P-)) over triplets; d_pos, d_neg: [T] pair
    distances (model.pair_distance) of each triplet's positive and negative pair."""
    return torch.relu(margin + d_pos - d_neg).mean()


class TripletLoss(nn.Module):
    """negatives 'sampled' (the paper): each sketch against its positive and its item's sampled
    negative photo, 2B pairs. 'batch': each sketch against every photo of the batch (B x B pairs,
    every photo of another object a negative: B - 1 triplets per sketch from only B photos);
    'batch_hard': the same pairs, one triplet per sketch with its closest negative."""

    def __init__(self, margin=0.2, negatives='sampled'):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f'unknown negatives {negatives!r}; expected one of {NEGATIVES}')
        self.margin, self.negatives = margin, negatives

    @classmethod
    def from_options(cls, args):
        return cls(args.margin, args.negatives)

    @property
    def photo_keys(self):
        """The photo images of a training batch this loss uses, in the order they are stacked."""
        return ('positive', 'negative') if self.negatives == 'sampled' else ('positive',)

    def pairs(self, b, device):
        """(sketch rows, photo rows), long [P] each, into B sketches and the stacked photo_keys."""
        ar = torch.arange(b, device=device)
        if self.negatives == 'sampled':
            return torch.cat([ar, ar]), torch.cat([ar, ar + b])
        return ar.repeat_interleave(b), ar.repeat(b)

    def forward(self, dist, photo_names):
        """dist: [..., P] distances of `pairs(B)` (leading dims, e.g. one row per fusion level, are
        averaged over like the triplets); photo_names: the B positives' photo names (a batch can
        hold two sketches of one photo: that photo is then no negative for either)."""
        b = len(photo_names)
        if self.negatives == 'sampled':
            return triplet_loss(dist[..., :b], dist[..., b:], self.margin)
        dist = dist.reshape(-1, b, b)
        other = torch.tensor([[x != y for y in photo_names] for x in photo_names], device=dist.device)
        d_pos = dist.diagonal(dim1=1, dim2=2)                                        # [L, B]
        if self.negatives == 'batch_hard':
            keep = other.any(1)
            d_neg = dist.masked_fill(~other, float('inf')).amin(2)
            return triplet_loss(d_pos[:, keep], d_neg[:, keep], self.margin)
        return triplet_loss(d_pos[:, :, None].expand_as(dist)[:, other], dist[:, other], self.margin)
