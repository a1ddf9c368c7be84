"""Hole-area bins of the mask-privacy method (Table 1): bin b holds masks with edges[b] < hidden share <= edges[b + 1].

A light module (no torch, no synthetic world) so that the synthetic mask generator, which aims each
mask at a bin, and the method's workers share one definition.
"""
from __future__ import annotations

BIN_EDGES = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def area_bin(ratio: float, edges=BIN_EDGES) -> int:
    """Index b with edges[b] < ratio <= edges[b + 1]; -1 outside all bins."""
    for b in range(len(edges) - 1):
        if edges[b] < ratio <= edges[b + 1]:
            return b
    return -1


def bin_label(b: int, edges=BIN_EDGES) -> str:
    return f"({edges[b]:g},{edges[b + 1]:g}]" if 0 <= b < len(edges) - 1 else "out"
