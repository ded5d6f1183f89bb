"""Every picture, sketch or photo, is decoded by one function (files.open_image), so that image
modes and metadata never change a picture silently (issue 15): EXIF orientation applied, 16-bit and
float pixels scaled (not clipped) to 8 bits, alpha composited on white, palettes expanded. One test
per mode, against a reference computed here from the pixels that were written."""
import numpy as np
import pytest
from conftest import make_config, write_folder
from PIL import Image

import dataset
import files
import layouts

EXIF_ORIENTATION = 0x0112


def gradient16():
    """uint16 (40, 64): a horizontal ramp over the whole 16-bit range."""
    return np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (40, 1))


def rgb(a):
    """uint8 (H, W) grey -> uint8 (H, W, 3)."""
    return np.repeat(a[:, :, None], 3, axis=2)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = gradient16()
    Image.fromarray(a).save(tmp_path / 'p.png')
    assert Image.open(tmp_path / 'p.png').mode == 'I;16'
    got = np.asarray(dataset.load_photo(tmp_path / 'p.png'))
    np.testing.assert_array_equal(got, rgb(np.round(a / 257).astype(np.uint8)))    # clipping made it all white


def test_32_bit_integer_image_is_read_as_16_bit(tmp_path):
    a = gradient16().astype(np.int32)
    Image.fromarray(a, 'I').save(tmp_path / 'p.tif')
    assert Image.open(tmp_path / 'p.tif').mode == 'I'
    got = np.asarray(dataset.load_photo(tmp_path / 'p.tif'))
    np.testing.assert_array_equal(got, rgb(np.round(a / 257).astype(np.uint8)))


def test_float_image_in_0_1_is_scaled_to_8_bits(tmp_path):
    a = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (40, 1))
    Image.fromarray(a, 'F').save(tmp_path / 'p.tif')
    got = np.asarray(dataset.load_photo(tmp_path / 'p.tif'))
    np.testing.assert_array_equal(got, rgb(np.round(a * 255).astype(np.uint8)))    # [0, 1] clipped was black


def test_grey_16_bit_sketch_keeps_its_strokes(tmp_path):
    """Dark grey strokes (16-bit 0x2000) on white: clipping to 8 bits made everything white, 'no ink'."""
    root = write_folder(tmp_path)
    dark = np.asarray(Image.open(root / 'sketches' / 'dark.png').convert('L'))
    Image.fromarray(np.where(dark < 128, 0x2000, 0xFFFF).astype(np.uint16)).save(root / 'sketches' / 'dark.png')
    train, _ = dataset.build_datasets(make_config('Folder', root))
    rec = next(r for r in train.index.train if r.name == 'sketches/dark.png')
    img, boxes = layouts.render_sketch(rec, make_config('Folder', root).style)
    ink = np.asarray(img.convert('L')) < 128
    np.testing.assert_array_equal(ink, dark < 128)
    assert len(boxes) == 3        # the whole image, the square, the line


@pytest.mark.parametrize('orientation, turn', [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270),
                                               (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_is_applied_to_photos_and_their_size(tmp_path, orientation, turn):
    a = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(a).save(tmp_path / 'p.png', exif=exif)
    want = Image.fromarray(a).transpose(turn)
    got = dataset.load_photo(tmp_path / 'p.png')
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert files.image_size(tmp_path / 'p.png') == want.size == got.size


def test_exif_orientation_is_applied_to_sketches(tmp_path):
    root = write_folder(tmp_path)
    dark = Image.open(root / 'sketches' / 'dark.png').convert('L')    # 100 x 80, stored turned as a camera would
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    dark.transpose(Image.Transpose.ROTATE_90).save(root / 'sketches' / 'dark.png', exif=exif)
    config = make_config('Folder', root)
    train, _ = dataset.build_datasets(config)
    rec = next(r for r in train.index.train if r.name == 'sketches/dark.png')
    img, boxes = layouts.render_sketch(rec, config.style)
    assert img.size == (100, 80)
    np.testing.assert_array_equal(np.asarray(img.convert('L')) < 128, np.asarray(dark) < 128)


def composite_on_white(rgba):
    a = rgba[..., 3:4].astype(np.float64) / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P', 'P+transparency', '1', 'L', 'CMYK', 'RGB'])
def test_alpha_palette_and_8_bit_modes(tmp_path, mode):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    if mode == 'RGBA':
        img, want = Image.fromarray(base, 'RGBA'), composite_on_white(base)
    elif mode == 'LA':
        img = Image.fromarray(base[..., [0, 3]], 'LA')
        want = composite_on_white(np.concatenate([rgb(base[..., 0]), base[..., 3:]], 2))
    elif mode == 'P':
        img = Image.fromarray(base[..., :3], 'RGB').quantize(16)
        want = np.asarray(img.convert('RGB'))
    elif mode == 'P+transparency':
        img = Image.fromarray(base[..., :3], 'RGB').quantize(16)
        img.info['transparency'] = 0
        rgba = np.asarray(img.convert('RGBA'))
        assert (rgba[..., 3] == 0).any()
        want = composite_on_white(rgba)
    elif mode == '1':
        img = Image.fromarray(base[..., 0] > 127)
        want = rgb(np.where(base[..., 0] > 127, 255, 0).astype(np.uint8))
    elif mode == 'L':
        img, want = Image.fromarray(base[..., 0], 'L'), rgb(base[..., 0])
    elif mode == 'CMYK':
        img = Image.fromarray(base, 'CMYK')
        want = np.asarray(img.convert('RGB'))
    else:
        img, want = Image.fromarray(base[..., :3], 'RGB'), base[..., :3]
    path = tmp_path / ('p.tif' if mode == 'CMYK' else 'p.png')
    img.save(path)
    got = dataset.load_photo(path)
    assert got.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(got), want)
