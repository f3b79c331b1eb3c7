"""Every case of the bad-input campaign (tests/bad_inputs.py), as its own `rledger` process: exit 2,
one line naming the field or file, nothing created, changed or removed."""

from __future__ import annotations

import pytest
from bad_inputs import CASES, clean, run_case


@pytest.mark.slow  # 80 processes, ~3 s each: run by CI after the default suite
@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert clean(outcome), (
        f"exit {outcome.exit_code}, {outcome.lines} lines, traceback={outcome.traceback}, "
        f"written={outcome.written}: {outcome.message}"
    )
