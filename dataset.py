"""The torch datasets: training triplets, test queries and the test gallery, built from a
validated `layouts.DataIndex` and one frozen `DataConfig`.

    train, test = build_datasets(DataConfig(dataset='ChairV2', root='DATA', image_size=224))
    python prepare.py dataset --dataset ChairV2 --data_root DATA --summary    # validate, print counts

Items are dicts of tensors: images RGB [3, S, S] in [0, 1], boxes [n, 4] in the tensor's pixels,
and with `points` the vector sketch [L, 3] (x / 256, y / 256, pen). Every image comes with a key,
a digest of the exact pixels the network gets (flip included), under which a frozen backbone
trunk's output can be cached (backbones.FeatureCache). Decoding a photo, drawing a
sketch, resizing and cropping are the same every epoch, so their result is cached (uint8, per
dataset object, `cache`); only the flip and the negative change per item. Which negative and
whether to flip are drawn from the item's own seed when the sampler gives one (`(index, seed)`
keys, see train.EpochSampler), so a resumed or distributed run sees exactly the same triplets.
"""
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

import layouts
import sketch
import synthetic
import transforms
from files import DatasetError, describe_os_error, open_image
from sketch import SketchStyle
from transforms import PHOTO_INPUTS


@dataclass(frozen=True)
class DataConfig:
    """Everything the data layer needs, built once from the options (experiment.data_config)."""
    dataset: str = 'Synthetic'
    root: str = 'data'
    num_regions: int = 16
    image_size: int = 96
    photo_input: str = 'rgb'         # 'edges': the photo's Canny edge map drawn like a sketch
    flip_prob: float = 0.5
    style: SketchStyle = field(default_factory=SketchStyle)
    points: bool = False             # also give vector sketches as (x, y, pen) sequences
    plans: bool = False              # also give GUI photos' tree merges (layouts.merge_plan)
    cache: bool = True
    generate: tuple = ()             # embedded datasets: (('seed', 0), ('train_photos', 300), ...)
    validation: float = 0.0          # > 0: evaluate on this fraction of the training photos (layouts.carve_validation)


load_photo = open_image      # photos and sketches: one decoder (files.open_image)


def network_photo(path, photo_input):
    """The photo as the network sees it: RGB, or its edge map (photo_input 'edges')."""
    img = load_photo(path)
    return transforms.photo_edges(img) if photo_input == 'edges' else img


def as_uint8(img):
    """PIL -> uint8 tensor [C, H, W]; sketches (grey) keep one channel to halve the cache."""
    a = np.asarray(img.convert('L') if img.mode == 'L' else img.convert('RGB'))
    return torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1).contiguous()


def as_float(u8):
    """uint8 [1 or 3, S, S] -> float RGB [3, S, S] in [0, 1] (equal to to_tensor of the image)."""
    return u8.float().div_(255).expand(3, -1, -1)


def image_key(u8):
    """A digest of a uint8 image tensor's pixels and shape: the key of its cached trunk features."""
    h = hashlib.blake2b(u8.numpy().tobytes(), digest_size=16)
    h.update(repr(tuple(u8.shape)).encode())
    return h.hexdigest()


def point_tensor(points, detail, flip):
    """Cleaned (L, 3) points -> float [L', 3] (x / 256, y / 256, pen) of the strokes kept at detail,
    mirrored like the image when flip."""
    p = sketch.select_points(points, detail).astype(np.float32)
    if flip:
        p[:, 0] = sketch.CANVAS - 1 - p[:, 0]
    p[:, :2] /= sketch.CANVAS
    return torch.from_numpy(p)


class Images:
    """The images of one index at the network's size, cached as uint8 after the deterministic
    geometry (transforms.train_geometry / test_geometry) of the given split, with their keys
    (image_key)."""

    def __init__(self, index, config, train):
        self.index, self.config = index, config
        self.geometry = transforms.train_geometry if train else transforms.test_geometry
        self.store = {}

    def _get(self, key, load):
        if key in self.store:
            return self.store[key]
        img, boxes = self.geometry(*load(), self.config.image_size)
        # Grey sketches are kept as one channel ('L'), photos as RGB.
        u8 = as_uint8(img)
        value = (u8, torch.as_tensor(np.asarray(boxes, dtype=np.float32)), image_key(u8))
        if self.config.cache:
            self.store[key] = value
        return value

    def sketch(self, rec):
        """-> (uint8 [1, S, S], boxes [Ns, 4], key)"""
        def load():
            img, boxes = layouts.render_sketch(rec, self.config.style)
            return img.convert('L'), boxes
        return self._get(('sketch', rec.name), load)

    def plan(self, name):
        """The photo's Explicit Hierarchy merges, long [Np - 1, 2] (GUI photos only)."""
        return torch.from_numpy(self.index.merge_plan(name))

    def photo(self, name):
        """-> (uint8 [3, S, S], boxes [Np, 4], key)"""
        rec = self.index.photos[name]
        return self._get(('photo', name), lambda: (network_photo(rec.path, self.config.photo_input), rec.boxes))


def item_rng(key):
    """(index, seed) -> (index, torch.Generator seeded with seed); a plain index uses torch's
    global generator (None)."""
    if isinstance(key, tuple):
        return key[0], torch.Generator().manual_seed(int(key[1]))
    return int(key), None


class TripletDataset(Dataset):
    """Training triplets (docs/method.md, (M9)). Item: dict of
    'sketch' [3, S, S], 'sketch_boxes' [Ns, 4], 'positive' [3, S, S], 'positive_boxes' [Np, 4],
    'negative' [3, S, S], 'negative_boxes' [Nn, 4], their keys 'sketch_key', 'positive_key',
    'negative_key' (image_key, '+flip' when mirrored), 'photo_name', and with points 'sketch_points'
    [L, 3]. The negative is the photo of a random other training sketch, never the positive's
    photo; one flip for the whole triplet.
    """

    def __init__(self, index, config):
        self.index, self.config = index, config
        self.records = index.train
        self.photo_names = [r.photo for r in self.records]
        self.images = Images(index, config, train=True)

    def __len__(self):
        return len(self.records)

    def negative_photo(self, i, generator=None):
        # Rejection sampling over sketches: picks a photo with probability ~ its sketch count.
        while True:
            j = int(torch.randint(len(self.records), (), generator=generator))
            if self.photo_names[j] != self.photo_names[i]:
                return self.photo_names[j]

    def _view(self, u8, boxes, key, flip):
        x = as_float(u8)
        return (*transforms.hflip(x, boxes), key + '+flip') if flip else (x, boxes, key)

    def __getitem__(self, key):
        i, g = item_rng(key)
        rec = self.records[i]
        # One flip for the whole triplet (as the authors' code): a sketch is never compared
        # with the mirror image of its photo, which matters for objects seen from one side.
        flip = torch.rand((), generator=g).item() < self.config.flip_prob
        negative = self.negative_photo(i, g)
        s, s_boxes, s_key = self._view(*self.images.sketch(rec), flip)
        p, p_boxes, p_key = self._view(*self.images.photo(rec.photo), flip)
        n, n_boxes, n_key = self._view(*self.images.photo(negative), flip)
        item = {'sketch': s, 'sketch_boxes': s_boxes, 'sketch_key': s_key, 'positive': p, 'positive_boxes': p_boxes,
                'positive_key': p_key, 'negative': n, 'negative_boxes': n_boxes, 'negative_key': n_key,
                'photo_name': rec.photo}
        if self.config.points:
            item['sketch_points'] = point_tensor(rec.points, self.config.style.detail, flip)
        if self.config.plans:
            item['positive_plan'], item['negative_plan'] = self.images.plan(rec.photo), self.images.plan(negative)
        return item


class QuerySet(Dataset):
    """Test sketches: {'sketch': [3, S, S], 'sketch_boxes': [Ns, 4], 'sketch_key', 'target': gallery index}."""

    def __init__(self, records, targets, images, config):
        self.records, self.targets, self.images, self.config = records, targets, images, config

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        u8, boxes, key = self.images.sketch(rec)
        item = {'sketch': as_float(u8), 'sketch_boxes': boxes, 'sketch_key': key, 'target': self.targets[i]}
        if self.config.points:
            item['sketch_points'] = point_tensor(rec.points, self.config.style.detail, False)
        return item


class GallerySet(Dataset):
    """Photos: {'photo': [3, S, S], 'photo_boxes': [Np, 4], 'photo_key'}."""

    def __init__(self, names, images):
        self.names, self.images = names, images

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        u8, boxes, key = self.images.photo(self.names[i])
        item = {'photo': as_float(u8), 'photo_boxes': boxes, 'photo_key': key}
        if self.images.config.plans:
            item['photo_plan'] = self.images.plan(self.names[i])
        return item


class RetrievalData:
    """Test split: .queries / .gallery datasets, names, targets, and the raw images for figures."""

    def __init__(self, index, config):
        self.index, self.config = index, config
        self.records = index.test
        self.query_names = [r.name for r in self.records]
        self.gallery_names = sorted({r.photo for r in self.records})
        position = {name: i for i, name in enumerate(self.gallery_names)}
        self.targets = [position[r.photo] for r in self.records]
        images = Images(index, config, train=False)
        self.queries = QuerySet(self.records, self.targets, images, config)
        self.gallery = GallerySet(self.gallery_names, images)

    def query_image(self, i):
        """The sketch as drawn (original frame, at the configured detail), PIL RGB."""
        return layouts.render_sketch(self.records[i], self.config.style)[0]

    def gallery_image(self, i):
        return load_photo(self.index.photos[self.gallery_names[i]].path)

    def gui_tree(self, photo):
        return self.index.gui_tree(photo)


def load_index(config):
    """Validate the dataset a DataConfig names -> layouts.DataIndex (DatasetError on bad input).
    An embedded dataset (package synthetic) is generated first, unless an up-to-date copy is there."""
    if config.dataset in synthetic.GENERATORS:
        generate_embedded(config)
    return layouts.load_index(config.dataset, config.root, config.num_regions, config.style, config.validation)


def generate_embedded(config):
    try:
        synthetic.ensure_synthetic(config.root, config.dataset, **dict(config.generate))
    except ValueError as e:
        raise DatasetError(f'--dataset {config.dataset}: {e}') from None
    except OSError as e:     # a read-only or full --data_root
        raise DatasetError(f'--dataset {config.dataset}: cannot generate it in {config.root} '
                           f'({e.filename or config.root}: {describe_os_error(e)})') from None


def build_datasets(config):
    """-> (TripletDataset on the train split, RetrievalData on the test split)."""
    if config.photo_input not in PHOTO_INPUTS:
        raise DatasetError(f'photo_input must be one of {PHOTO_INPUTS}, got {config.photo_input!r}')
    index = load_index(config)
    if config.points and not index.vector:
        raise DatasetError(f'{config.dataset} at {config.root} has raster sketches; this method needs '
                           f'vector sketches (x, y, pen), as the QMUL layout and .npy Folder sketches have')
    if config.plans and any(p.parents is None for p in index.photos.values()):
        raise DatasetError(f'{config.dataset} at {config.root} has no GUI trees; the Explicit Hierarchy '
                           f'needs the SWIRE layout (RICO view hierarchies)')
    return TripletDataset(index, config), RetrievalData(index, config)


# padded key -> its mask (None: a plan's length follows from its photo's node mask)
PAD_MASKS = {'_boxes': '_mask', '_points': '_points_mask', '_plan': None}


def collate(batch):
    """list of item dicts -> batch dict.
    Image tensors -> [B, 3, S, S]; 'K_boxes' -> zero-padded [B, N, 4] + 'K_mask' bool [B, N]
    (True = real node, real nodes first); 'K_points' likewise [B, L, 3] + 'K_points_mask', and
    'K_plan' zero-padded [B, R, 2];
    ints -> LongTensor [B]; anything else -> list.
    """
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        suffix = next((s for s in PAD_MASKS if key.endswith(s)), None)
        if suffix:
            n = max(len(v) for v in values)
            padded = torch.zeros(len(values), n, values[0].shape[1], dtype=values[0].dtype)
            mask = torch.zeros(len(values), n, dtype=torch.bool)
            for b, v in enumerate(values):
                padded[b, :len(v)] = v
                mask[b, :len(v)] = True
            out[key] = padded
            if PAD_MASKS[suffix]:
                out[key[:-len(suffix)] + PAD_MASKS[suffix]] = mask
        elif torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


# ----------------------------------------------------------------------------- summary
def stats(values):
    v = np.asarray(values)
    return f'min {v.min():g} / median {np.median(v):g} / max {v.max():g}'


def format_summary(index, config):
    """Human-readable counts, node statistics, repairs and notes of a validated index."""
    records = index.train + index.test
    vector = {r.points is not None for r in records}
    kind = {frozenset([True]): 'strokes', frozenset([False]): 'ink nodes incl. whole image'}.get(
        frozenset(vector), 'strokes or ink nodes')
    photos = list(index.photos.values())
    k = config.num_regions
    few = sorted(n for n, p in index.photos.items() if len(p.boxes) < k)
    sizes = {}
    for p in photos:
        s = f'{p.size[0]}x{p.size[1]}'
        sizes[s] = sizes.get(s, 0) + 1
    lines = [
        f'{index.name} at {index.root}',
        f'  train: {len(index.train)} sketches / {len({r.photo for r in index.train})} photos',
        f'  test:  {len(index.test)} sketches / {len({r.photo for r in index.test})} photos',
        f'  nodes per sketch ({kind}, sketch_detail={config.style.detail}): {stats([r.nodes for r in records])}',
        f'  boxes per photo (first --num_regions={k}): {stats([len(p.boxes) for p in photos])}',
        f'  photos with fewer than {k} boxes: {len(few)}'
        + (f' ({", ".join(few[:5])}{", ..." if len(few) > 5 else ""})' if few else ''),
        '  photo sizes: ' + ', '.join(f'{s} x{c}' for s, c in sorted(sizes.items(), key=lambda x: -x[1])),
        f'  photo boxes from: {index.box_source}',
    ]
    if index.repairs:
        lines.append('  repairs:')
        lines += [f'    {what}: {n} (e.g. {index.repair_example[what]})' for what, n in sorted(index.repairs.items())]
    else:
        lines.append('  repairs: none')
    lines += [f'  note: {n}' for n in index.notes]
    return '\n'.join(lines)
