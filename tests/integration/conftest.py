"""The integration tests exercise aki_mma_sdpa's media-row patch at every length.

By default short sequences take the dense-mask path instead (see ``SDPA_DENSE_MASK_MAX_KEYS``); that path
has its own test in ``test_families.py``.
"""

import pytest

import aki.integration


@pytest.fixture(autouse=True)
def media_row_patch_at_every_length(monkeypatch):
    monkeypatch.setattr(aki.integration, "SDPA_DENSE_MASK_MAX_KEYS", 0)
