"""The notebooks as a website (issue 13, item 9): `scripts/build_site.py` builds it offline and `scripts/check_site.py`
checks it in headless Chromium (README "The notebooks as a website").

The end-to-end test is slow (executing every notebook: about 6 min on 2 cores the first time; the executions are
kept in the checkout's git-ignored `_site_build/` and reused while nothing they depend on changed, so a rerun takes
under a minute) and needs Debian's `chromium` and `chromium-driver` and the `docs` extra. Where either is missing it
is skipped with the reason, e.g. in CI, which installs neither."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DOCS_TOOLS = ("mkdocs", "mkdocs_jupyter", "jupyter_server_mathjax", "selenium")
BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_widget_outputs_become_text():
    "A tqdm notebook bar would make the page fetch the widget manager from a CDN: the page gets its final text."
    bs = load_script("build_site")
    state = {"box": {"state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
             "l": {"state": {"value": "subsets\u2007s0:\u2007100%"}}, "p": {"state": {"value": 22.0, "max": 22.0}},
             "r": {"state": {"value": "\u200722/22\u2007[00:05&lt;00:00]"}}}
    out = bs.unwidget([{"output_type": "display_data", "metadata": {},
                        "data": {bs.WIDGET: {"model_id": "box"}, "text/plain": "subsets s0:   0%|"}}], state)
    assert out == [{"output_type": "stream", "name": "stderr", "text": "subsets s0: 100%|##########| 22/22 [00:05<00:00]\n"}]


def run(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)


def test_site_builds_offline_and_passes_the_browser_check(tmp_path, data_dir):
    missing = [m for m in DOCS_TOOLS if importlib.util.find_spec(m) is None]
    if missing: pytest.skip(f"the docs extra is not installed (missing {', '.join(missing)}): pip install -e '.[docs]'")
    absent = [p for p in BROWSER if not Path(p).exists()]
    if absent: pytest.skip(f"{', '.join(absent)} not found: apt-get install chromium chromium-driver")

    site = tmp_path / "site"
    env = {**os.environ, "PREFIXREP_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    b = run("build_site.py", "--site-dir", str(site), env=env)
    assert b.returncode == 0, (b.stdout + b.stderr)[-4000:]
    assert (site / "index.html").exists() and (site / "build_manifest.json").exists()
    assert not re.search(r"unpkg\.com|cdn\.jsdelivr|googleapis", (site / "06_removal.html").read_text())

    c = run("check_site.py", "--site-dir", str(site), env=env)
    assert c.returncode == 0, c.stdout + c.stderr
    for line in ("ok   Table 2 page: a <table>", "ok   Figure 2 page: an output image loaded",
                 "ok   no page requests anything but localhost"):
        assert line in c.stdout, c.stdout
    for shot in ("screenshot_table2.png", "screenshot_figure2.png"):
        png = (site / shot).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000, shot

    # the check can fail: the same site with Table 2's tables taken out of its page, and Figure 2's image removed
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    p = broken / "05_transfer.html"
    p.write_text(re.sub(r"<table.*?</table>", "", p.read_text(), flags=re.S))
    p = broken / "07_sequential.html"
    p.write_text(re.sub(r"<img[^>]*>", "", p.read_text()))
    c = run("check_site.py", "--site-dir", str(broken), env=env)
    assert c.returncode == 1, c.stdout + c.stderr
    assert "FAIL Table 2 page: a <table>" in c.stdout and "FAIL Figure 2 page: an output image loaded" in c.stdout, c.stdout
