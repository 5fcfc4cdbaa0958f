"""Every example runs in its smoke mode and saves its figures (and its feature dashboard)."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "examples").glob("plot_*.py"))
# Examples that need an optional extra: script name -> (module, how to install it).
REQUIRES = {
    "plot_language_model.py": ("transformers", "pip install -e '.[models]'"),
}
# The feature dashboards the smoke runs write: script name -> (file, input kind, the views'
# names and the node layers each shows).
DASHBOARDS = {
    "plot_image_mlp.py": (
        "image_mlp_digits_dashboard.html",
        "image",
        ["LIB"],
        ["fc1", "fc2", "out"],
    ),
    "plot_language_model.py": (
        "language_model_dashboard.html",
        "tokens",
        ["LIB", "PCA"],
        ["transformer.h.1"],
    ),
}
PAYLOAD = re.compile(
    r'<script type="application/json" id="lib-dashboard-data">(.*?)</script>', re.S
)


def check_dashboard(folder, stdout, name, kind, views, nodes):
    """The page ``name`` in ``folder`` is a whole HTML file showing ``views`` of ``nodes``."""
    page = folder / name
    assert page.is_file(), (
        f"the example wrote no {name}: {sorted(p.name for p in folder.iterdir())}"
    )
    assert name in stdout, "the example does not say where its dashboard is"
    assert page.stat().st_size > 20_000, f"{name} is only {page.stat().st_size} bytes"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    (data,) = PAYLOAD.findall(text)
    payload = json.loads(data)
    assert payload["input"]["kind"] == kind
    assert [view["name"] for view in payload["views"]] == views
    for view in payload["views"]:
        assert [node["name"] for node in view["nodes"]] == nodes, view["name"]
        if len(nodes) > 1:  # the explorer draws the example's interaction graph
            assert view["sections"], f"{view['name']} of {name} has no edges"
        for node in view["nodes"]:
            features = node["features"]
            assert features, f"{view['name']} shows no feature of {node['name']}"
            assert all(feature["examples"] for feature in features), (view["name"], node["name"])


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
    if script.name in DASHBOARDS:
        check_dashboard(tmp_path, result.stdout, *DASHBOARDS[script.name])


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
