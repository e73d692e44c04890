"""The test session: BLAS and torch threads pinned (steady timings), the shared ``problem`` fixture.

Two threads in a serial run; one per worker under pytest-xdist (``make test`` runs ``-n 2``), so the workers
do not oversubscribe the cores (spinning BLAS and OpenMP threads then slow each other down many times over).
"""
import os

_THREADS = "1" if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else "2"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

from .helpers import make_problem  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def problem():
    return make_problem()
