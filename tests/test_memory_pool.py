"""Arrow's allocator in a pipeline process: jemalloc, which hands freed memory back to the system
where mimalloc (Arrow's own default) keeps it (bench/parquet_step.py: 25-70 MB less peak RSS a
month, at the same speed), unless the user chose one with ARROW_DEFAULT_MEMORY_POOL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the pipeline chooses jemalloc on Linux only")


def arrow_pool_after(code: str, env: dict[str, str]) -> str:
    """The backend of Arrow's default pool in a new process that runs ``code`` first (the same
    imports as luigi's --module pipeline, or pyarrow's before them)."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import pyarrow; print(pyarrow.default_memory_pool().backend_name)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def without_pool_choice() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}


def test_a_pipeline_process_allocates_arrow_memory_with_jemalloc():
    assert arrow_pool_after("import pipeline", without_pool_choice()) == "jemalloc"
    # Any module of the package runs the package's __init__ first: the bench's and the tests' imports too.
    assert arrow_pool_after("import pipeline.catalog", without_pool_choice()) == "jemalloc"


def test_the_users_choice_of_allocator_wins():
    assert arrow_pool_after("import pipeline", {**without_pool_choice(), "ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"


def test_a_process_that_imported_pyarrow_before_the_pipeline_keeps_arrows_default():
    # Arrow picks its pool once, at its first allocation: the choice cannot be changed after it,
    # and two pools in one process would each keep their own freed memory.
    assert arrow_pool_after("import pyarrow as pa; pa.array([1]); import pipeline", without_pool_choice()) == "mimalloc"
