"""The feature cache of a frozen backbone trunk: the research loop's shortcut.

With `--freeze_backbone N` the first N stages of the backbone do not train (backbones.
FeatureExtractor.freeze), and the paper's training augmentation is deterministic apart from the
flip (Resize + CenterCrop; sketches drawn the same way each time). So the frozen part's output
for an image is a function of its pixels alone: computed once, kept here, and a training step
costs the unfrozen stages and the head only.

Entries are keyed by the image's key (dataset.image_key: a digest of the exact pixels, '+flip'
when mirrored), so an image that changes simply misses. The trunk itself is named by a
fingerprint (its architecture, its weights and buffers, the input normalisation included): a
cache file written for another trunk - other weights, another N, another backbone - is refused
(FeatureCacheError), never used. Files are read with `torch.load(weights_only=True)` and written
atomically (files.atomic_write).
"""
import hashlib
import io
from pathlib import Path

import torch

from files import WriteError, atomic_write

VERSION = 1


class FeatureCacheError(Exception):
    """A cache file that cannot be used; the message names the file and why."""


def fingerprint(module):
    """A digest of a module's architecture (its repr) and every tensor of its state, the
    non-persistent buffers (backbones.Normalize's mean and std) included."""
    h = hashlib.sha1(repr(module).encode())
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """key -> a tensor computed from the frozen trunk (float32, CPU), for one trunk (`fingerprint`):
    the trunk's output map of an image [C, h, w] (`maps`), or, when the whole backbone is frozen,
    an image's pooled region features (model.RegionEncoder), keyed by the image and its boxes.

    `path` (optional) is the file the cache is read from and saved to.
    """

    def __init__(self, fingerprint, path=None):
        self.fingerprint, self.path = fingerprint, None if path is None else Path(path)
        self.store, self.dirty = {}, False
        self.hits = self.misses = 0
        if self.path is not None and self.path.exists():
            self._read()

    def __len__(self):
        return len(self.store)

    def get(self, keys, compute):
        """keys: B keys -> their B tensors (CPU). compute(missing) -> the tensors of the rows
        `missing` (indices into keys), called without autograd for the keys not yet cached."""
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                values = compute(missing)
            for i, value in zip(missing, values):
                self.store[keys[i]] = value.detach().float().cpu().clone()
            self.dirty = True
        return [self.store[k] for k in keys]

    def maps(self, keys, images, trunk):
        """keys: list of B image keys; images: [B, 3, H, W] -> trunk(images) [B, C, h, w], on
        images' device. Only the images not yet in the cache go through the trunk."""
        rows = self.get(keys, lambda missing: trunk(images[missing]))
        return torch.stack(rows).to(images.device, non_blocking=True)

    # ------------------------------------------------------------ the file
    def _read(self):
        try:
            state = torch.load(self.path, map_location='cpu', weights_only=True)
        except Exception as e:
            raise FeatureCacheError(f'{self.path}: not a readable feature cache ({type(e).__name__}); '
                                    f'delete it or pass another --feature_cache') from None
        if not (isinstance(state, dict) and state.get('version') == VERSION
                and isinstance(state.get('keys'), list) and isinstance(state.get('values'), list)
                and len(state['keys']) == len(state['values'])
                and all(isinstance(k, str) for k in state['keys'])
                and all(torch.is_tensor(v) and v.is_floating_point() for v in state['values'])):
            raise FeatureCacheError(f'{self.path}: not a feature cache of this codebase (version {VERSION}); '
                                    f'delete it or pass another --feature_cache')
        if state.get('fingerprint') != self.fingerprint:
            raise FeatureCacheError(
                f'{self.path}: stale feature cache, written for another frozen trunk (other weights, '
                f'another --freeze_backbone or --backbone / --feature_layer); delete it or pass another '
                f'--feature_cache')
        self.store = {k: v.float() for k, v in zip(state['keys'], state['values'])}

    def save(self):
        """Write the cache to its file (when it has one and something new)."""
        if self.path is None or not self.dirty:
            return
        keys = sorted(self.store)
        buffer = io.BytesIO()
        torch.save({'version': VERSION, 'fingerprint': self.fingerprint, 'keys': keys,
                    'values': [self.store[k] for k in keys]}, buffer)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda f: f.write(buffer.getbuffer()))
        except (OSError, WriteError) as e:
            raise FeatureCacheError(f'{self.path}: cannot write the feature cache ({e})') from None
        self.dirty = False


def attach(model, path=None):
    """Give every frozen backbone of `model` a cache (one per distinct trunk; trunks with the same
    fingerprint share one). With `path`, all of them live in that one file, which must then belong
    to a single trunk. Returns the caches."""
    from backbones import FeatureExtractor
    extractors = [m for m in model.modules() if isinstance(m, FeatureExtractor) and m.frozen]
    caches = {}
    for m in extractors:
        fp = fingerprint(m.trunk())
        if fp not in caches:
            if path is not None and caches:
                raise FeatureCacheError(f'{path}: this model has frozen trunks with different weights; one '
                                        f'--feature_cache file holds one trunk (leave it out to cache in memory)')
            caches[fp] = FeatureCache(fp, path)
        m.cache = caches[fp]
    return list(caches.values())


def save_all(model):
    """Save the cache file of every frozen backbone of `model` that has one."""
    from backbones import FeatureExtractor
    seen = set()
    for m in model.modules():
        if isinstance(m, FeatureExtractor) and m.cache is not None and id(m.cache) not in seen:
            seen.add(id(m.cache))
            m.cache.save()
