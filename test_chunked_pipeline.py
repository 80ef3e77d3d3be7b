"""The test suite's named entry point: runs every test under tests/, as `python -m pytest -q` does.

    python test_chunked_pipeline.py              # the whole suite
    python test_chunked_pipeline.py -m "not slow"  # the fast tests (under a minute)

Extra arguments go to pytest unchanged. The tests mirror the packages: tests/datasets, tests/models,
tests/losses, tests/training, tests/picking, tests/synthetic; tests/test_pipeline.py runs the
scripts end to end.
"""
import sys
from pathlib import Path

import pytest


def main(argv=None):
    tests = Path(__file__).resolve().parent / "tests"
    return pytest.main(["-q", str(tests), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
