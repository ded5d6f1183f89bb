"""Single-sketch search with a trained model: rank a folder of photos (or the test gallery) for one
sketch, print the ranking and draw it.

    python evaluate.py --checkpoint runs/RUN/best.pth --query SKETCH [--gallery PHOTO_DIR] [--topk 10]

SKETCH: a raster sketch image (dark on light or the reverse), a vector sketch .npy (L, 3) of
x, y, pen on the 256 canvas, or a sketch key of the checkpoint's dataset. The gallery's features
(region nodes and first-stage embeddings) are computed once and stored in PHOTO_DIR as a
`GalleryIndex` (float16), tied to the checkpoint's bytes, the data config (experiment.data_config)
and every photo's size and modification time: a stale or unreadable index is rebuilt, never used.
The index also stores the photos it was built from (name, bytes, modification time, W x H) in its
row order, and they must be the gallery's now. A gallery that cannot be written is searched all the same.
"""
import hashlib
from pathlib import Path

import torch

import layouts
import retrieval
import sketch
import transforms
from checkpoint import CheckpointError, save_checkpoint
from dataset import GallerySet, Images, build_datasets, collate, load_photo, point_tensor
from experiment import data_config
from files import SKETCH_MAX_PIXELS, DatasetError, image_size, open_image, read_npy, require
from model import batch_inputs
from proposals import BoxCache, folder_images

INDEX_FILE = '.fgsbir_gallery_index.pt'
BOX_FILE = '.fgsbir_boxes.json'


class StaleIndexError(Exception):
    """A gallery index built for another checkpoint, other options or other photos."""


class GalleryIndex:
    """Features of a photo folder for one model: names, features (float16 on disk), identity, and
    the photos they were built from (photo_rows: [name, bytes, mtime_ns, W, H] per feature row)."""

    def __init__(self, names, features, identity, photos):
        self.names, self.features, self.identity, self.photos = names, features, identity, photos

    def save(self, path):
        half = {k: v.half() if v.is_floating_point() else v for k, v in self.features.items()}
        save_checkpoint(path, names=self.names, features=half, identity=self.identity, photos=self.photos)

    @classmethod
    def load(cls, path, identity, photos):
        """The index at path if it was built for `identity` and the photos now in the gallery
        (photo_rows); StaleIndexError otherwise."""
        if not Path(path).exists():
            raise FileNotFoundError(path)
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            ok = isinstance(state, dict) and {'identity', 'names', 'features', 'photos'} <= set(state)
        except Exception:   # truncated or foreign file: an index is a cache, so rebuild it
            ok = False
        if not ok:
            raise StaleIndexError(f'{path} is not a readable gallery index')
        if not isinstance(state['identity'], str) or state['identity'] != identity:
            raise StaleIndexError(f'{path} was built for another checkpoint, other options or other photos')
        feats = state['features']
        try:    # (comparing lists that hold tensors can raise)
            ok = (isinstance(state['photos'], list) and state['photos'] == photos
                  and isinstance(state['names'], list) and state['names'] == [r[0] for r in photos]
                  and isinstance(feats, dict) and bool(feats)
                  and all(torch.is_tensor(v) and v.dim() >= 1 and len(v) == len(photos) for v in feats.values()))
        except Exception:
            ok = False
        if not ok:
            raise StaleIndexError(f'{path} does not hold one feature row per photo of the gallery, in order')
        feats = {k: v.float() if v.is_floating_point() else v for k, v in feats.items()}
        return cls(list(state['names']), feats, identity, photos)


def photo_rows(photos):
    """[name, bytes, mtime_ns, W, H] of each photo of {name: path}, sorted by name: the row order
    of a gallery index."""
    rows = []
    for name, path in sorted(photos.items()):
        st = Path(path).stat()
        rows.append([name, st.st_size, st.st_mtime_ns, *image_size(path)])
    return rows


def identity_of(checkpoint, args, photos):
    """sha256 over the checkpoint's bytes, the data config (everything that shapes an image's
    tensor and boxes) and each photo's name, size in bytes and modification time."""
    h = hashlib.sha256(Path(checkpoint).read_bytes())
    h.update(repr(data_config(args)).encode())
    for name, path in sorted(photos.items()):
        st = Path(path).stat()
        h.update(f'{name}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


@torch.no_grad()
def build_index(model, args, photos, identity, device, box_cache):
    """Encode every photo of {name: path} (selective-search boxes from box_cache, checked as every
    dataset's boxes are: layouts.add_photos)."""
    index = layouts.DataIndex('gallery', Path('.'), args.num_regions)
    table, _, bad = box_cache.boxes(photos)
    if bad:
        print(f'gallery boxes: {bad} bad entries of {box_cache.path} recomputed')
    layouts.add_photos(index, table, photos, box_cache.path, whole_first=True)
    names = sorted(photos)
    config = data_config(args)
    feats, _ = retrieval.encode_set(model, GallerySet(names, Images(index, config, train=False)), 'photo',
                                    args.eval_batch_size, device)
    return GalleryIndex(names, {k: v.cpu() for k, v in feats.items()}, identity, photo_rows(photos))


def query_inputs(spec, args, device):
    """(PIL sketch as drawn, inputs dict of a batch of one) for a query file or dataset key."""
    style = data_config(args).style
    path = Path(spec)
    if path.suffix.lower() == '.npy' and path.is_file():
        try:
            points, _ = style.clean(read_npy(path, style.max_points))
        except sketch.SketchError as e:
            raise DatasetError(f'--query {path}: not a vector sketch ({e})') from None
        img, boxes = style.vector(points)
    elif path.is_file():
        points = None
        try:
            img, boxes, _ = style.raster(open_image(path, SKETCH_MAX_PIXELS))
        except sketch.SketchError as e:
            raise DatasetError(f'--query {path}: {e}') from None
    else:
        _, test = build_datasets(data_config(args))
        records = {r.name: r for r in test.index.train + test.index.test}
        require(spec in records, f'--query {spec}: neither a file nor a sketch key of {args.dataset}')
        rec = records[spec]
        img, boxes = layouts.render_sketch(rec, style)
        points = rec.points
    item = sketch_item(img, boxes, points, style.detail, args.image_size)
    return img, batch_inputs(collate([item]), 'sketch', device)


def sketch_item(img, boxes, points, detail, image_size):
    """A drawn sketch (PIL, its boxes, its cleaned (L, 3) points or None) -> a query item as the test
    split gives it: {'sketch': [3, S, S], 'sketch_boxes': [n, 4], and with points 'sketch_points'}."""
    x, b = transforms.to_tensors(*transforms.test_geometry(img.convert('L'), boxes, image_size))
    item = {'sketch': x, 'sketch_boxes': b}
    if points is not None:
        item['sketch_points'] = point_tensor(points, detail, flip=False)
    return item


def query_scores(model, args, inputs, gallery_features):
    """scores [G] (CPU) of one query (inputs of a batch of one sketch) against a gallery's features,
    in the model's ranking order (--rerank M with a first stage)."""
    s = model.encode([('sketch', inputs)])[0]
    return retrieval.rank_scores(model, s, gallery_features, args.rerank, args.pair_chunk)[0].cpu()


def load_gallery(model, args, checkpoint, gallery, device):
    """(photo names, their features on device, name -> image path) of a --gallery folder (its index
    reused or rebuilt; a read-only folder is searched without storing it) or, with gallery None,
    of the test gallery of the checkpoint's dataset."""
    if gallery is None:
        _, test = build_datasets(data_config(args))
        p, _ = retrieval.encode_set(model, test.gallery, 'photo', args.eval_batch_size, device)
        return test.gallery_names, p, lambda name: test.index.photos[name].path
    photos = folder_images(gallery, '--gallery ')
    path = Path(gallery) / INDEX_FILE
    identity, rows = identity_of(checkpoint, args, photos), photo_rows(photos)
    try:
        index = GalleryIndex.load(path, identity, rows)
        print(f'gallery index: {path} (reused)')
    except (FileNotFoundError, StaleIndexError) as e:
        if isinstance(e, StaleIndexError):
            print(f'gallery index: {e}; rebuilding')
        index = build_index(model, args, photos, identity, device, BoxCache(Path(gallery) / BOX_FILE, hint=None))
        try:
            index.save(path)
            print(f'gallery index: {path} ({len(photos)} photos)')
        except CheckpointError as e:   # a read-only gallery: searched, not indexed
            print(f'note: {e}; the index is not stored and is built again next time')
    return index.names, {k: v.to(device) for k, v in index.features.items()}, photos.__getitem__


@torch.no_grad()
def search(model, args, checkpoint, query, gallery, topk, device):
    """Print the top-k photos of the gallery for the query and draw them; returns [(name, distance)]."""
    img, inputs = query_inputs(query, args, device)
    require('points' in inputs or not type(model).needs_points,
            f'--query {query}: {args.method} reads vector sketches; give a .npy (L, 3) or a dataset key')
    names, p, path_of = load_gallery(model, args, checkpoint, gallery, device)
    scores = query_scores(model, args, inputs, p)
    order = scores.argsort(stable=True)[:topk].tolist()
    # With rerank M only the top M have a distance from the head; the rest are in first-stage order.
    reranked = min(args.rerank, len(names)) if retrieval.reranks(model, args.rerank) else None
    how = f' (rerank {args.rerank})' if reranked is not None else ''
    print(f'query {query}: top {len(order)} of {len(names)} photos{how}')
    for k, g in enumerate(order):
        value = f'{scores[g]:10.4f}' if reranked is None or k < reranked else f'{"1st stage":>10}'
        print(f'{k + 1:4d}  {value}  {names[g]}')
    # The figure's name carries a digest of the whole query, so two queries with one stem do not collide.
    tag = hashlib.sha1(str(Path(str(query)).resolve() if Path(str(query)).exists() else query).encode()).hexdigest()[:8]
    fig = Path(checkpoint).with_name(f'search_{Path(str(query)).stem.replace("/", "_")}_{tag}.png')
    retrieval.retrieval_row(img, [load_photo(path_of(names[g])) for g in order],
                            [f'#{k + 1}' for k in range(len(order))], set(), caption='query').save(fig)
    print(f'figure: {fig}')
    return [(names[g], float(scores[g])) for g in order]

