"""A type's static print (title and captions) and where its values go: the one layout that the
synthetic world (on its background) and regen's glyph layer (on a transparent canvas) both draw.

    slots = draw_static(ImageDraw.Draw(img), doc_type, (ox, oy, w, h))   # [(x, y, font px, right)]
"""
from __future__ import annotations

from PIL import ImageDraw

from docray.doctypes.schema import DocType
from docray.fonts import font

TITLE_Y, TITLE_SIZE, CAPTION_SIZE = 0.035, 0.095, 0.058  # fractions of the document height


def draw_static(d: ImageDraw.ImageDraw, t: DocType, rect, alpha: int | None = None) -> list[tuple[int, int, int, int]]:
    """Draw `t`'s title and captions on `d` for the document at `rect` (x, y, w, h) px (`alpha`
    appended to every colour when given: an RGBA canvas). Returns each field value's
    (x, y, font px, right) in the canvas' px, in template order."""
    ox, oy, w, h = rect

    def ink(c):
        return tuple(c) if alpha is None else (*c, alpha)

    size = round(TITLE_SIZE * h)
    while size > 6 and font(t.title_font, size).getlength(t.title) > (0.96 - t.title_x) * w:
        size -= 1  # shrink the title to fit
    if t.title:
        d.text((ox + t.title_x * w, oy + TITLE_Y * h), t.title, font=font(t.title_font, size), fill=ink(t.colors.title))
    slots = []
    for f in t.fields:
        size = max(6, round(f.size * h))
        cap = font(t.caption_font, max(5, round(CAPTION_SIZE * h)))
        x, y = ox + f.x * w, oy + f.y * h
        if f.caption:
            d.text((x, y), f.caption, font=cap, fill=ink(t.colors.caption))
            if t.stacked:
                y += cap.size * 1.15
            else:
                x += cap.getlength(f.caption) + 0.4 * size
        slots.append((round(x), round(y), size, ox + round(f.right * w)))
    return slots
