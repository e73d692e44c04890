"""The test session: BLAS and torch threads pinned (steady timings), the shared ``problem`` fixture."""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from .helpers import make_problem  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def problem():
    return make_problem()
