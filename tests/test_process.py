"""mmbert/process.py: the OpenMP and allocator settings ``import mmbert`` applies, and the user's overrides."""

import json
import os
import subprocess
import sys

import pytest

PROBE = "import json, mmbert, mmbert.process as p, os; print(json.dumps({**p.applied, 'env': os.environ.get('OMP_WAIT_POLICY')}))"


def _applied(**env) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MMBERT_MALLOC", "MALLOC_MMAP_THRESHOLD_",
                         "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_import_sets_passive_waits_and_raises_the_malloc_thresholds():
    got = _applied()
    assert got["omp_wait_policy"] == got["env"] == "PASSIVE"
    assert got["malloc"] == "mmap threshold 256 MiB, trim threshold 512 MiB"


def test_the_users_settings_win():
    assert _applied(OMP_WAIT_POLICY="ACTIVE")["env"] == "ACTIVE"
    assert _applied(GOMP_SPINCOUNT="3000")["env"] is None  # a spin bound is a choice too: no PASSIVE over it
    assert _applied(MMBERT_MALLOC="default")["malloc"].startswith("default")
    assert _applied(MALLOC_MMAP_THRESHOLD_="1048576")["malloc"] == "the environment's MALLOC_*_THRESHOLD_"
