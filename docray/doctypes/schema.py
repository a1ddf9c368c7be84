"""One document type as its template file gives it: `DocType` and its parts, validated by pydantic.

Positions are fractions of the document's own width (x, right, w) or height (y, size, h), so a
template fits any size. `docray.doctypes` documents the file format key by key.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from docray.fonts import CJK_STYLES, FONT_STYLES

PATTERNS = ("guilloche", "rosette", "dots", "waves", "frame")
SEAL_SHAPES = ("circle", "ellipse", "rectangle", "square")
SEAL_COLORS = ("red", "blue")
CJK_LANGUAGES = ("zh", "ja", "ko")  # default to the CJK font styles
NAME = r"^[a-z][a-z0-9_]*$"

Frac = Annotated[float, Field(ge=0.0, le=1.0)]
Byte = Annotated[int, Field(ge=0, le=255)]
RGB = tuple[Byte, Byte, Byte]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_font(v: str) -> str:
    if v and v not in FONT_STYLES:
        raise ValueError(f"unknown font style {v!r}; one of {list(FONT_STYLES)}")
    return v


class Colors(_Strict):
    background: tuple[RGB, RGB] = ((236, 236, 236), (248, 248, 248))  # gradient from one to the other
    pattern: RGB = (180, 180, 190)  # ink of the background patterns
    title: RGB = (40, 40, 60)
    caption: RGB = (95, 95, 110)
    value: RGB = (25, 25, 30)


class Fonts(_Strict):
    """Font styles (docray.fonts.FONT_STYLES); '' takes the language's default."""

    title: str = ""
    caption: str = ""
    value: str = ""

    _styles = field_validator("title", "caption", "value")(_check_font)


class FieldSpec(_Strict):
    """One field: its caption at (x, y), its value after it (or below it, captions: above), in a
    font `size` high, never past `right`."""

    name: str = Field(pattern=NAME)
    caption: str = ""  # printed caption, '' for none
    x: Frac  # caption (or value) left
    y: Frac  # caption top
    right: Frac = 0.95  # the value never runs past this x
    size: float = Field(0.068, gt=0, le=0.5)  # value font px / document height
    font: str = ""  # value font style, '' -> the type's fonts.value
    value: str = ""  # the synthetic world's value generator (docray.synth.text.GENERATORS), '' for none

    _style = field_validator("font")(_check_font)

    @model_validator(mode="after")
    def _inside(self):
        if not self.x < self.right:
            raise ValueError(f"value box outside [0, 1] or empty: x={self.x} must be left of right={self.right}")
        if self.y + self.size > 1:
            raise ValueError(f"value box outside [0, 1]: y + size = {self.y + self.size:.3f} > 1")
        return self


class Portrait(_Strict):
    """The portrait slot: top-left (x, y), width w and height h."""

    x: Frac
    y: Frac
    w: Annotated[float, Field(gt=0, le=1)]
    h: Annotated[float, Field(gt=0, le=1)]

    @model_validator(mode="after")
    def _inside(self):
        if self.x + self.w > 1 or self.y + self.h > 1:
            raise ValueError(f"portrait box outside [0, 1]: x + w = {self.x + self.w:.3f}, y + h = {self.y + self.h:.3f}")
        return self

    def box(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.w, self.h


class Seal(_Strict):
    """Where the synthetic world stamps a seal: centre (x, y), `height`, drawn on `rate` of documents."""

    shapes: tuple[Literal[SEAL_SHAPES], ...] = Field(min_length=1)
    colors: tuple[Literal[SEAL_COLORS], ...] = Field(min_length=1)
    x: Frac
    y: Frac
    height: Annotated[float, Field(gt=0, le=1)]
    rate: Frac = 1.0


class DocType(_Strict):
    """A document type: its page (aspect, colours, patterns, title), fields, portrait and seal slots."""

    name: str = Field(pattern=NAME)  # the file's stem
    title: str = ""
    language: str = "en"  # ISO 639-1; zh, ja, ko default to the CJK fonts
    aspect: float = Field(gt=0.2, lt=5.0)  # width / height
    colors: Colors = Colors()
    patterns: tuple[Literal[PATTERNS], ...] = ()  # drawn in this order over the background gradient
    title_x: Frac = 0.05  # the title's left (its top is at 0.035)
    captions: Literal["beside", "above"] = "beside"  # caption before its value, or above it (passports)
    fonts: Fonts = Fonts()
    fields: tuple[FieldSpec, ...] = Field(min_length=1)
    portrait: Portrait | None = None
    seal: Seal | None = None

    @model_validator(mode="after")
    def _unique(self):
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate field names {dup}")
        return self

    @property
    def stacked(self) -> bool:
        return self.captions == "above"

    def _default(self, role: str) -> str:
        if self.language in CJK_LANGUAGES:
            return CJK_STYLES[0]
        return "sans-bold" if role == "title" else "sans"

    @property
    def title_font(self) -> str:
        return self.fonts.title or self._default("title")

    @property
    def caption_font(self) -> str:
        return self.fonts.caption or self._default("caption")

    def value_font(self, f: FieldSpec) -> str:
        return f.font or self.fonts.value or self._default("value")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)
