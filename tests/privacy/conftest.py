"""Privacy tests use small matrices: one BLAS thread avoids oversubscribing the shared 2-core machine."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
