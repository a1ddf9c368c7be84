"""The file-type library: document type -> compression base and second size threshold.

    lib = load_file_types()                      # the packaged file_types.yaml, validated
    ft = lib.get("passport_page")                # FileType(base=85, format='jpeg', second=...)
    lib.check_original(1024, 640, 180_000)       # raises ThresholdError unless first < original

A document type is any type of the doc-type registry (`docray.doctypes`). A type without its own
entry (e.g. a user's new type) gets the library's `default` entry; a library without one raises a
KeyError naming the type, which `RegenCompressor` checks for every type its model knows when it starts.

Thresholds are (width, height, bytes). `a < b` means: `a` is no wider and no taller than `b`, and
strictly smaller in bytes. The library enforces second < first for every type when it is loaded,
`check_original` enforces first < original for every request, `check_processed` that a processed
image fits the first threshold (size and bytes), and `FileType.check_compressed` that a compressed
file (a terminal's upload in split mode) has its type's format and fits its second threshold.
`codec_entry()` is the entry of an upload that is not a known document (the codec path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

DEFAULT_PATH = Path(__file__).with_name("file_types.yaml")
FORMATS = ("jpeg", "webp")


class ThresholdError(ValueError):
    """Size thresholds out of order: second < first < original must hold."""


class WrongFormat(ValueError):
    """A compressed file in another format than its file type's."""


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(gt=0, description="max width, px")
    height: int = Field(gt=0, description="max height, px")
    bytes: int = Field(gt=0, description="max size of the encoded file, bytes")

    def below(self, other: "Threshold") -> bool:
        """self < other: not larger in either side, strictly fewer bytes."""
        return self.width <= other.width and self.height <= other.height and self.bytes < other.bytes

    def __str__(self) -> str:
        return f"{self.width}x{self.height} px, {self.bytes:,} bytes"


class FileType(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: int = Field(ge=1, le=100, description="quality level (1-100) when the byte budget is ample")
    format: Literal["jpeg", "webp"] = "jpeg"
    second: Threshold

    def check_compressed(self, fmt: str | None, width: int, height: int, nbytes: int) -> None:
        """A compressed file of this type: its format (`sniff_format`'s name, e.g. 'JPEG') must be
        `format` (WrongFormat), its size and bytes within `second` (ThresholdError)."""
        if (fmt or "").lower() != self.format:
            raise WrongFormat(f"this type compresses to {self.format}, the file is {fmt or 'not a known format'}")
        if width > self.second.width or height > self.second.height or nbytes > self.second.bytes:
            raise ThresholdError(f"the file ({width}x{height} px, {nbytes:,} bytes) is over the second threshold "
                                 f"({self.second})")


class FileTypeLibrary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    first: Threshold  # the processed (generated) image's size
    types: dict[str, FileType]
    default: FileType | None = None  # for a type without its own entry

    def model_post_init(self, _ctx) -> None:
        if not self.types and self.default is None:
            raise ThresholdError("the file-type library has no types and no default")
        for name, ft in {**self.types, **({"(default)": self.default} if self.default else {})}.items():
            if not ft.second.below(self.first):
                raise ThresholdError(
                    f"type {name!r}: second threshold ({ft.second}) must be below the first ({self.first}): "
                    "no wider, no taller and fewer bytes")

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        data = handler(self)
        if self.default is None:  # a library without a default dumps as the dict it was read from
            data.pop("default", None)
        return data

    def get(self, doc_type: str) -> FileType:
        """The entry of `doc_type`, else the default entry."""
        if doc_type in self.types:
            return self.types[doc_type]
        if self.default is None:
            raise KeyError(f"the file-type library has no entry for document type {doc_type!r} and no default; "
                           f"it has {sorted(self.types)}: add one (types: or default: in file_types.yaml)")
        return self.default

    def codec_entry(self) -> FileType:
        """The codec path's entry (an upload that is not a known document): the `default`, else the
        strictest type (fewest bytes, then fewest pixels)."""
        return self.default or min(self.types.values(), key=lambda f: (f.second.bytes, f.second.width * f.second.height))

    def check_processed(self, width: int, height: int, nbytes: int) -> None:
        """Raise ThresholdError unless a processed image fits the first threshold (size and bytes)."""
        if width > self.first.width or height > self.first.height or nbytes > self.first.bytes:
            raise ThresholdError(f"the processed image ({width}x{height} px, {nbytes:,} bytes) is over the first "
                                 f"threshold ({self.first})")

    def check_original(self, width: int, height: int, nbytes: int) -> None:
        """Raise ThresholdError unless first < original (the upload is larger than what we generate)."""
        original = Threshold(width=max(1, width), height=max(1, height), bytes=max(1, nbytes))
        if not self.first.below(original):
            raise ThresholdError(
                f"the original ({original}) must be above the first threshold ({self.first}): "
                "at least as wide and tall and more bytes; nothing to compress")

    def to_json(self) -> dict:
        return self.model_dump()


def load_file_types(path: str | Path | dict | None = None) -> FileTypeLibrary:
    """The library from a YAML file (default: the packaged one) or a dict (e.g. `GET /v1/file-types`)."""
    data = path if isinstance(path, dict) else yaml.safe_load(Path(path or DEFAULT_PATH).read_text())
    try:
        return FileTypeLibrary.model_validate(data)
    except ValidationError as e:  # surface the ordering error itself, not pydantic's wrapper
        for err in e.errors():
            if isinstance(err.get("ctx", {}).get("error"), ThresholdError):
                raise err["ctx"]["error"] from None
        raise
