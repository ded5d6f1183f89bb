"""Sketch geometry: strokes, rasterisation, stroke boxes, coarse levels, raster ink nodes."""
import numpy as np
import pytest
from conftest import vector_sketch
from PIL import Image, ImageDraw

import sketch


def test_split_strokes_by_pen_flag():
    strokes = sketch.split_strokes(vector_sketch())
    assert [len(s) for s in strokes] == [5, 2, 1]
    assert strokes[2].tolist() == [[128, 100]]
    # points after the last pen = 1 form a final stroke
    p = np.array([[0, 0, 0], [5, 5, 1], [9, 9, 0], [12, 9, 0]], float)
    assert [len(s) for s in sketch.split_strokes(p)] == [2, 2]


def test_rasterise_ink_where_the_stroke_is():
    stroke = np.array([[50.0, 100.0], [150.0, 100.0]])
    img, boxes = sketch.rasterise([stroke], line_width=3)
    a = np.asarray(img)
    assert img.mode == 'RGB' and img.size == (256, 256)
    assert (a[100, 60:140] < 50).all()                     # dark ink on the line
    assert (a[110:, :] == 255).all() and (a[:90] == 255).all()  # white elsewhere
    ys, xs = np.nonzero(a[..., 0] < 255)
    assert boxes.tolist() == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    assert boxes[0, 3] - boxes[0, 1] == 3                  # line width included


@pytest.mark.parametrize('width', [1, 3, 5])
def test_dot_strokes_are_drawn(width):
    img, boxes = sketch.rasterise([np.array([[30.0, 40.0]])], line_width=width)
    a = np.asarray(img)[..., 0]
    assert a[40, 30] < 128
    x1, y1, x2, y2 = boxes[0]
    assert x1 <= 30 < x2 and y1 <= 40 < y2 and (x2 - x1) == width


def test_stroke_boxes_one_per_stroke_and_clipped_to_canvas():
    strokes = [np.array([[0.0, 0.0], [40.0, 0.0]]), np.array([[100.0, 100.0], [100.0, 255.0]])]
    img, boxes = sketch.rasterise(strokes, line_width=5)
    assert boxes.shape == (2, 4)
    assert boxes[0].tolist() == [0, 0, 41, 3]    # width clipped at the top border
    assert boxes[1].tolist() == [98, 100, 103, 256]
    assert (boxes >= 0).all() and (boxes <= 256).all()


def test_clean_points_errors_and_repairs():
    with pytest.raises(sketch.SketchError, match='empty'):
        sketch.clean_points(np.zeros((0, 3)))
    with pytest.raises(sketch.SketchError, match='one point'):
        sketch.clean_points([[3, 4, 1]])
    with pytest.raises(sketch.SketchError, match='NaN'):
        sketch.clean_points([[3, np.nan, 0], [4, 4, 1]])
    with pytest.raises(sketch.SketchError, match='off the 256 canvas'):
        sketch.clean_points([[3, 4, 0], [600, 4, 1]])
    with pytest.raises(sketch.SketchError, match='shape'):
        sketch.clean_points(np.zeros((4, 2)))
    with pytest.raises(sketch.SketchError, match='pen'):
        sketch.clean_points([[3, 4, 0], [5, 4, 2]])
    p, repairs = sketch.clean_points([[-3, 4, 0], [260, 4, 0]])
    assert p[:, :2].min() == 0 and p[:, :2].max() == 255
    assert len(repairs) == 2  # clamped + last stroke not pen-terminated


def test_coarse_levels_are_monotone_prefixes():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 12))
        strokes = [rng.uniform(0, 255, (int(rng.integers(1, 6)), 2)) for _ in range(n)]
        kept = {d: sketch.select_strokes(strokes, d) for d in ('full', 'coarse', 'coarse++')}
        assert len(kept['full']) == n
        assert 1 <= len(kept['coarse++']) <= len(kept['coarse']) <= n
        for d in kept:  # prefixes in drawing order
            assert all(a is b for a, b in zip(kept[d], strokes))
        lengths = sketch.stroke_lengths(strokes)
        if lengths.sum() > 0:
            assert lengths[:len(kept['coarse'])].sum() >= 0.7 * lengths.sum() - 1e-6
            assert lengths[:len(kept['coarse++']) - 1].sum() < 0.5 * lengths.sum()


def test_render_vector_coarse_draws_a_subset_of_the_ink():
    full, fb = sketch.render_vector(vector_sketch(), 'full')
    coarse, cb = sketch.render_vector(vector_sketch(), 'coarse++')
    assert len(cb) == 1 and len(fb) == 3
    ink_full, ink_coarse = np.asarray(full)[..., 0] < 128, np.asarray(coarse)[..., 0] < 128
    assert ink_coarse.any() and not (ink_coarse & ~ink_full).any()


def ink_image(polarity='dark', mode='L'):
    """100 x 80 with two rectangles far apart and two blobs 3 px apart."""
    m = Image.new('L', (100, 80), 0)
    d = ImageDraw.Draw(m)
    d.rectangle([5, 5, 30, 30], outline=255, width=2)
    d.rectangle([60, 40, 70, 50], fill=255)
    d.rectangle([74, 40, 80, 50], fill=255)
    if polarity == 'dark':
        return Image.eval(m, lambda v: 255 - v).convert(mode)
    if polarity == 'alpha':
        rgba = Image.new('RGBA', m.size, (0, 0, 0, 0))
        rgba.putalpha(m)
        return rgba
    return m.convert(mode)


@pytest.mark.parametrize('polarity,mode', [('dark', 'L'), ('dark', 'RGB'), ('light', 'L'), ('light', 'RGB'),
                                           ('alpha', 'RGBA')])
def test_raster_nodes_any_polarity(polarity, mode):
    img, boxes, info = sketch.raster_nodes(ink_image(polarity, mode), merge_gap=0.05)
    assert img.mode == 'RGB' and img.size == (100, 80)
    a = np.asarray(img)[..., 0]
    assert a[0, 0] == 255 and a[5, 5] < 128           # white background, dark ink
    # whole image first, then the square, then the two close blobs merged (gap 3 <= 5 px)
    assert boxes.tolist() == [[0, 0, 100, 80], [5, 5, 31, 31], [60, 40, 81, 51]]
    assert not info['capped']


def test_group_boxes_merges_by_ink_distance():
    mask = np.zeros((60, 120), bool)
    mask[10:20, 0:10] = mask[10:20, 13:20] = mask[10:20, 23:30] = True   # 3 background px between
    mask[40:50, 100:110] = True
    assert sketch.group_boxes(mask, 3).tolist() == [[0, 10, 30, 20], [100, 40, 110, 50]]
    assert len(sketch.group_boxes(mask, 2)) == 4
    assert len(sketch.group_boxes(mask, 0)) == 4
    assert sketch.group_boxes(mask, 80).tolist() == [[0, 10, 110, 50]]


def test_group_boxes_keeps_a_frame_and_its_contents_apart():
    m = Image.new('L', (100, 160), 0)
    d = ImageDraw.Draw(m)
    d.rectangle([2, 2, 97, 157], outline=255, width=2)        # phone frame
    d.rectangle([20, 30, 80, 50], outline=255, width=2)       # an element inside it
    d.ellipse([20, 80, 40, 100], outline=255, width=2)
    boxes = sketch.group_boxes(np.asarray(m) > 128, 5)
    assert boxes.tolist() == [[2, 2, 98, 158], [20, 30, 81, 51], [20, 80, 41, 101]]


def test_raster_nodes_cap_keeps_largest_and_blank_is_an_error():
    m = Image.new('L', (200, 200), 0)
    d = ImageDraw.Draw(m)
    for i in range(5):
        d.rectangle([10 + 38 * i, 10, 10 + 38 * i + 4 * (i + 1), 10 + 4 * (i + 1)], fill=255)
    _, boxes, info = sketch.raster_nodes(m, merge_gap=0.0, max_nodes=3)
    assert info['capped'] and len(boxes) == 3
    assert boxes[0].tolist() == [0, 0, 200, 200]
    assert [b[0] for b in boxes[1:]] == [10 + 38 * 3, 10 + 38 * 4]  # the two largest, scan order
    with pytest.raises(sketch.SketchError, match='no ink'):
        sketch.raster_nodes(Image.new('L', (50, 50), 0))
    with pytest.raises(sketch.SketchError, match='no ink'):
        sketch.raster_nodes(Image.new('RGB', (50, 50), 'white'))


def test_raster_coarse_erases_smallest_components():
    m = Image.new('L', (200, 200), 0)
    d = ImageDraw.Draw(m)
    d.rectangle([10, 10, 110, 110], fill=255)     # most of the ink
    d.rectangle([150, 150, 160, 160], fill=255)   # detail
    full, fb, _ = sketch.raster_nodes(m, 'full', merge_gap=0.0)
    coarse, cb, _ = sketch.raster_nodes(m, 'coarse', merge_gap=0.0)
    assert len(fb) == 3 and cb.tolist() == [[0, 0, 200, 200], [10, 10, 111, 111]]
    assert np.asarray(coarse)[155, 155, 0] == 255 and np.asarray(full)[155, 155, 0] == 0
