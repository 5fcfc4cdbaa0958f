"""Every example runs in its smoke mode and saves its figures."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "examples").glob("plot_*.py"))
# Examples that need an optional extra: script name -> (module, how to install it).
REQUIRES = {
    "plot_language_model.py": ("transformers", "pip install -e '.[models]'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_smoke(script, tmp_path):
    pytest.importorskip("matplotlib")
    module, install = REQUIRES.get(script.name, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module} ({install})")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), "the example saved no figure"
