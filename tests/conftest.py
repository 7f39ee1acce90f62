"""Shared test setup: offline Hub, the data mirror beside the checkout, small thread count."""
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [os.environ.get("PREFIXREP_DATA_DIR"), ROOT.parent / "shared" / "data"]
DATA_DIR = next((Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), None)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None:
        pytest.fail("the offline data mirror was not found: set PREFIXREP_DATA_DIR or put shared/data beside the checkout")
    return DATA_DIR
