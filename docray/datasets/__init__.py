"""Datasets: the contract of each kind (`contracts`), validation and import of a user's files."""
from docray.datasets.contracts import CONTRACTS, KINDS, Contract, conform, contract

__all__ = ["CONTRACTS", "KINDS", "Contract", "conform", "contract"]
