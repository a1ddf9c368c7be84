"""Document types as data: one template file per type, read by every part of docray that lays out,
draws, reads or classifies documents (the synthetic world, regen's layout and field crops,
recognition's doc_type classes, the file-type library).

    from docray.doctypes import registry
    reg = registry()                 # Registry: .names, .index(name), [name] -> DocType
    t = reg["identity_card"]         # t.aspect, t.fields[0].x, t.portrait, t.seal, ...

The six built-in types are the files in `docray/doctypes/types/`. A user adds a type by dropping a
file `<name>.yaml` into `$DOCRAY_HOME/doctypes/` or a folder listed in `$DOCRAY_DOCTYPES`
(':'-separated), no code: `examples/doctypes/cn_resident_card.yaml` is one, with Chinese fields.
Class order: built-ins first, then user types by name (see `docray.doctypes.registry`).

A template file (positions are fractions of the document's width for x, right, w and of its
height for y, size, h; only `aspect` and `fields` are required; an unknown key, a box outside
[0, 1] or a missing key is an error naming the file and the key):

    title: IDENTITY CARD          # printed at (title_x, 0.035), shrunk to fit; '' for none
    language: en                  # ISO 639-1; zh, ja, ko default every font to cjk-sans
    aspect: 1.585                 # width / height
    colors: {background: [[228, 236, 248], [246, 232, 236]], pattern: [150, 170, 215],
             title: [30, 60, 140], caption: [95, 95, 110], value: [25, 25, 30]}
    patterns: [guilloche, rosette]   # any of guilloche, rosette, dots, waves, frame
    title_x: 0.05
    captions: beside              # beside: "Name  value"; above: caption over its value (passports)
    fonts: {title: sans-bold, caption: sans, value: sans}   # docray.fonts.FONT_STYLES
    fields:                       # in reading order: the order of a content string's values
      - {name: name, caption: Name, x: 0.05, y: 0.24, right: 0.63, size: 0.068, font: sans, value: name}
    portrait: {x: 0.66, y: 0.18, w: 0.29, h: 0.56}           # the portrait slot, or leave it out
    seal: {shapes: [circle], colors: [red], x: 0.86, y: 0.80, height: 0.30, rate: 0.5}   # or leave it out

A field's value is drawn at its caption's end (or below it), `size` high, never past `right`; its
`value` names the synthetic world's generator (`docray.synth.text.GENERATORS`), needed only to
draw the type synthetically. The seal slot tells the synthetic world where to stamp (a seal's
centre and height, on a `rate` share of documents); `doc_rect` places a document in a frame.
"""
from docray.doctypes.draw import draw_static
from docray.doctypes.geometry import doc_rect, homography
from docray.doctypes.registry import (
    BUILTIN, BUILTIN_DIR, DocTypeError, Registry, UnknownDocType, load_doctype, registry, user_dirs,
)
from docray.doctypes.schema import DocType, FieldSpec, Portrait, Seal

__all__ = ["BUILTIN", "BUILTIN_DIR", "DocType", "DocTypeError", "FieldSpec", "Portrait", "Registry", "Seal",
           "UnknownDocType", "doc_rect", "draw_static", "homography", "load_doctype", "registry", "user_dirs"]
