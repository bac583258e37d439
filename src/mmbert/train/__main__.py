"""``python -m mmbert.train CONFIG`` (what ``torchrun --nproc_per_node=N -m mmbert.train CONFIG`` runs)."""

import sys

from mmbert.train.entry import main

sys.exit(main())
