"""The soak/fault suite (tests/soak.py) with a one-minute load: no unexpected response,
no leaked slot or memory, a clean SIGTERM drain and a 503 once the engine is dead."""

import pytest

from tests.soak import SoakConfig, run_soak


def test_soak(tmp_path):
    result = run_soak(SoakConfig(seconds=60, work_dir=tmp_path))
    print(result.report())
    if result.failures:
        pytest.fail(result.report(), pytrace=False)
