"""``python -m mmbert.train CONFIG`` (what ``torchrun --nproc_per_node=N -m mmbert.train CONFIG`` runs)."""

from mmbert.train.entry import main
from mmbert.train.parallel import exit_process

exit_process(main())
