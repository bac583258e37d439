"""``mmbert train CONFIG [--resume] [--set key=value ...] [--out RUN_DIR]``: a thin shim over mmbert.train.entry."""

from mmbert.train.entry import add_arguments, run

__all__ = ["add_arguments", "run"]
