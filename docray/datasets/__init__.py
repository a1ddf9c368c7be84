"""Datasets: the contract of each kind (`contracts`), validation (`validate`) and import (`importers`)
of a user's files; `docray data ...` (`cli`). docs/datasets.md explains every column and layout."""
from docray.datasets.contracts import CONTRACTS, KINDS, Contract, conform, contract

__all__ = ["CONTRACTS", "KINDS", "Contract", "conform", "contract"]
