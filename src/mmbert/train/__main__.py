"""``python -m mmbert.train CONFIG`` (what ``torchrun --nproc_per_node=N -m mmbert.train CONFIG`` runs)."""

import logging
import os
import sys

from mmbert.train.entry import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Now and then a rank of a gloo run aborted at its very end ("terminate called without an active exception",
    # 2 of 3 full test runs on a fast machine, none in 55 reruns of the test alone) and torchrun then reported the
    # run as failed. That message is a C++ thread still joinable when exit() destroys static objects; the run's
    # files are written and the process group destroyed by now, so leave without that teardown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
