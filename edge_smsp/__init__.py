"""edge-smsp: one-shot SMSP pruning of pre-trained vision models for edge devices."""

__version__ = "0.1.0"
