"""Joint image + box transforms: every geometric change moves the image and its boxes together,
so a box covers the same object part in the tensor the network sees.

Training (as the authors' code, arXiv 2007.15103): Resize(S * 240 / 224) + CenterCrop(S), then a
horizontal flip; test: Resize(S). The resize and crop are deterministic, so the data layer caches
their result (`train_geometry`, `test_geometry`) and only the flip happens per item (`hflip`).
Tensors are RGB in [0, 1]; each backbone applies its own normalisation (backbones.py).
"""
import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

PHOTO_INPUTS = ('rgb', 'edges')     # what the network sees of a photo: the RGB image or photo_edges


def joint_resize(img, boxes, size):
    """PIL W x H, boxes (n, 4) in its frame -> PIL size x size (aspect not kept), boxes scaled."""
    W, H = img.size
    out = TF.resize(img, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return out, boxes * np.array([size / W, size / H, size / W, size / H], dtype=np.float32)


def clamp_boxes(boxes, W, H):
    """Clamp boxes to a W x H image. A box with no area left becomes a 1-px wide/high box at
    the border it left through, so every node keeps a (tiny) region."""
    b = boxes.copy()
    b[:, 0] = b[:, 0].clip(0, W - 1)
    b[:, 1] = b[:, 1].clip(0, H - 1)
    b[:, 2] = b[:, 2].clip(b[:, 0] + 1, W)
    b[:, 3] = b[:, 3].clip(b[:, 1] + 1, H)
    return b


def joint_center_crop(img, boxes, size):
    """Centre crop size x size (torchvision's offsets); boxes shifted and clamped (clamp_boxes)."""
    W, H = img.size
    left, top = int(round((W - size) / 2.0)), int(round((H - size) / 2.0))
    out = TF.crop(img, top, left, size, size)
    return out, clamp_boxes(boxes - np.array([left, top, left, top], dtype=np.float32), size, size)


def joint_hflip(img, boxes):
    """Mirror a PIL image left-right; x1' = W - x2, x2' = W - x1."""
    return TF.hflip(img), flip_boxes(boxes, img.size[0])


def flip_boxes(boxes, width):
    """Boxes (n, 4) array or tensor of a mirrored image of the given width."""
    b = boxes.clone() if torch.is_tensor(boxes) else boxes.copy()
    b[:, 0], b[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return b


def to_tensors(img, boxes):
    """-> (FloatTensor [3, S, S] RGB in [0, 1], FloatTensor [n, 4])."""
    return TF.to_tensor(img.convert('RGB')), torch.as_tensor(np.asarray(boxes, dtype=np.float32))


def train_geometry(img, boxes, size):
    """Resize to round(S * 240 / 224) square, centre crop S: the deterministic part of training."""
    return joint_center_crop(*joint_resize(img, boxes, round(size * 240 / 224)), size)


def test_geometry(img, boxes, size):
    """Resize to S x S, nothing else."""
    return joint_resize(img, boxes, size)


def hflip(x, boxes):
    """Mirror an image tensor [C, S, S] and its boxes [n, 4]."""
    return x.flip(-1), flip_boxes(boxes, x.shape[-1])


def photo_edges(img):
    """PIL RGB photo -> its edge map drawn like a sketch: dark lines on white, RGB, same size.

    Canny (hysteresis thresholds 30 / 80 on the blurred grey image, low enough to keep the
    internal part boundaries of product shots), lines thickened to about the sketches' 3 px on a
    256 canvas. Photos as edge maps are the FG-SBIR practice of Triplet-SN (Yu et al., CVPR
    2016); here `--photo_input edges`, for networks trained from scratch.
    """
    gray = cv2.GaussianBlur(np.asarray(img.convert('L')), (5, 5), 0)
    edges = cv2.Canny(gray, 30, 80)
    k = max(1, round(2 * max(img.size) / 256)) + 1
    edges = cv2.dilate(edges, np.ones((k, k), np.uint8))
    return Image.fromarray(255 - edges).convert('RGB')
