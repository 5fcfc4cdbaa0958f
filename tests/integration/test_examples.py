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


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_an_unknown_flag_is_refused(script):
    # A typo in a flag must not run the example with defaults it did not ask for.
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in result.stderr


@pytest.mark.slow
def test_an_example_without_matplotlib_says_it_draws_nothing(tmp_path):
    # matplotlib hidden from the import system: the example still computes,
    # and says why no figure was drawn.
    script = pathlib.Path(__file__).parents[2] / "examples" / "plot_grid_search_threshold.py"
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        f"sys.argv = [{str(script)!r}, '--smoke', '--output-dir', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "matplotlib is not installed: no figures drawn" in result.stdout
    assert not list(tmp_path.glob("*.png"))
