"""Checkpoint merging (linear, task arithmetic, TIES), streamed tensor by tensor over safetensors.

``methods`` holds the math as pure functions; ``runner`` applies it to checkpoint directories;
``safetensors_io`` reads and writes one tensor at a time.
"""

from mmbert.merge.methods import METHODS, disjoint_merge, elect_sign, linear, task_arithmetic, ties, trim_magnitude
from mmbert.merge.runner import MergeSpec, merge

__all__ = [
    "METHODS", "MergeSpec", "disjoint_merge", "elect_sign", "linear", "merge", "task_arithmetic", "ties",
    "trim_magnitude",
]
