"""The README's Python examples run as written (the library example, then the research loop's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    library = next(b for b in blocks if 'Ledger("runs/demo")' in b)
    loop = next(b for b in blocks if "Ledgers(" in b)
    script = tmp_path / "examples.py"
    script.write_text(
        library
        + "\n"
        + loop
        + "\nfrom rledger import Ledger\nprint('ROLLOUTS', Ledger('runs/demo').check())\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 20,480 steps are 10 rollouts of 2,048; the loaded model continued the same ledger with 5 more
    assert "ROLLOUTS 15" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
def test_readme_instruments_example_runs(tmp_path):
    """The momentum and watched-pairs example, as written (4,096 steps)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (example,) = [b for b in blocks if "watch=" in b]
    script = tmp_path / "instruments.py"
    script.write_text(
        "from rledger import InstrumentedPPO, Ledger\n"
        + example
        + "\nprint('CHECK', Ledger('runs/watched').check())\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHECK 2" in proc.stdout, proc.stdout[-2000:]  # 4,096 steps are 2 rollouts of 2,048
