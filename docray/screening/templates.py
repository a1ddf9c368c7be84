"""Cut templates: a target picture split into a grid of tiles that cover it exactly.

A template is named `RxC`, R rows by C columns ("1x3" is a horizontal strip of three tiles side by
side, "3x1" a vertical one). Tile edges are `round(i * size / n)`, so the tiles of a template
partition the picture: no gap, no overlap, whatever its size.

    for tile in cut(img, "3x3", tile_size=64): tile.position, tile.box, tile.image

Cut types are also stored as small integers (`cut_code`) in the library and the index; code
`WILD` marks tiles seen in the wild and added directly (no template).
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

CUT_TYPES = ("1x3", "3x1", "1x4", "2x2", "2x3", "3x2", "3x3", "wild")  # index = cut code
DEFAULT_TEMPLATES = CUT_TYPES[:-1]
WILD = CUT_TYPES.index("wild")


def cut_code(name: str) -> int:
    """The integer code of a cut type name; a clear error for unknown names."""
    if name not in CUT_TYPES:
        raise ValueError(f"unknown cut type {name!r}; known: {', '.join(CUT_TYPES)}")
    return CUT_TYPES.index(name)


def grid(name: str) -> tuple[int, int]:
    """(rows, cols) of a template name 'RxC'."""
    if name == "wild" or name not in CUT_TYPES:
        raise ValueError(f"not a cut template: {name!r}; templates: {', '.join(DEFAULT_TEMPLATES)}")
    rows, cols = name.split("x")
    return int(rows), int(cols)


def tile_boxes(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of a rows x cols grid, row-major; they partition the picture."""
    if rows < 1 or cols < 1 or width < cols or height < rows:
        raise ValueError(f"cannot cut a {width}x{height} picture into {rows}x{cols} tiles")
    xs = [round(i * width / cols) for i in range(cols + 1)]
    ys = [round(j * height / rows) for j in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


@dataclass
class Tile:
    cut_type: str  # template name, e.g. "3x3"
    position: int  # row-major index in the grid
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in the source picture
    image: Image.Image  # the tile scaled to tile_size x tile_size (or unscaled when tile_size=None)


def scale_tile(img: Image.Image, tile_size: int) -> Image.Image:
    """Every tile, whatever its shape, is scaled to one square size (the descriptor's input)."""
    return img.convert("RGB").resize((tile_size, tile_size), Image.BILINEAR)


def cut(img: Image.Image, template: str, tile_size: int | None = 64) -> list[Tile]:
    """Cut `img` by one template; tiles scaled to `tile_size` (None keeps their own size)."""
    rows, cols = grid(template)
    out = []
    for pos, box in enumerate(tile_boxes(img.width, img.height, rows, cols)):
        crop = img.crop(box)
        out.append(Tile(template, pos, box, scale_tile(crop, tile_size) if tile_size else crop.convert("RGB")))
    return out


def cut_all(img: Image.Image, templates=DEFAULT_TEMPLATES, tile_size: int | None = 64) -> list[Tile]:
    """Cut `img` by every template in `templates` (1x3 ... 3x3 by default)."""
    return [t for name in templates for t in cut(img, name, tile_size)]
