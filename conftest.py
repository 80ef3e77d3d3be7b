"""Shared pytest fixtures: repo root on sys.path, and the optional real dataset in ../shared."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data"
EMPIAR = SHARED_DATA / "empiar10017"


@pytest.fixture
def empiar10017():
    """The real EMPIAR-10017 micrographs; skipped with a message where ../shared is absent."""
    if not (EMPIAR / "annotations").is_dir():
        pytest.skip(f"real data not found at {EMPIAR} (only present beside the developers' checkout)")
    return EMPIAR
