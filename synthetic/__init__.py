"""Embedded procedural fine-grained datasets, so that the project runs with zero downloads.

`Synthetic` (QMUL layout, read by the ChairV2/ShoeV2 loader): chairs built from a hierarchy of
parts (silhouette, backrest / seat / legs / stretchers / armrests of several types, small details
such as cushions, buttons, studs, castors) in families of near-duplicate siblings, so the test
gallery is fine-grained. Photos are shaded, coloured and textured product shots; sketches are
drawn from the same geometry, coarse to fine, as wobbly (x, y, pen) strokes on the 256 canvas,
and the box pickle holds part-hierarchy regions in place of selective search.

`SyntheticGUI` (SWIRE layout with RICO trees, read by the SWIRE loader): mobile app screens
(toolbar, tabs, search bar, list / card grid / form / detail content, FAB, bottom navigation) as
RICO semantic-annotation JSON trees, rendered screenshots and hand-drawn-style wireframe sketches
(white ink on black), also in families of near-duplicate layouts.

Every item draws from its own numpy.random.default_rng([seed, stream, ...]) stream, so the output
bytes depend only on the seed and the size (PNG and fixed-quality JPEG are deterministic for a
given Pillow build).

Modules
  geometry     curves, outlines, the hand-drawn line style, warps, noise, per-item random streams
  families     design families: a base design and its near-duplicate siblings
  chair_parts  the chair's 3-D-ish part hierarchy (faces for the photo, lines for the sketch)
  chairs       chair designs, photo rendering, region boxes, vector sketches, generate_chairs
  gui_tree     app screen designs and their RICO trees
  gui          KINDS (how each GUI element kind is painted and sketched), generate_gui
  cache        ensure_synthetic (atomic generation, marker), preview
  __main__     the command line: python -m synthetic --name Synthetic --data_root data --preview P.png
"""
from synthetic.cache import (
                             DEFAULT_SIZE,
                             GENERATOR_VERSION,
                             GENERATORS,
                             MARKER,
                             box_pickle_path,
                             ensure_synthetic,
                             is_current,
                             preview,
                             read_marker,
)

__all__ = ['DEFAULT_SIZE', 'GENERATOR_VERSION', 'GENERATORS', 'MARKER', 'box_pickle_path', 'ensure_synthetic',
           'is_current', 'preview', 'read_marker']
