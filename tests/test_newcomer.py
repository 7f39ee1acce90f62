"""A newcomer's first hour (issue 13): the README's commands verbatim on a fresh clone, results that stay where the
environment says, unreadable ledger records, the install's kernel, typed papermill parameters, the README itself,
and the library from outside the checkout after a non-editable install."""
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fresh_clone(tmp_path: Path, data_dir: Path) -> Path:
    """What `git clone` of this working tree would give (tracked files and new files git does not ignore), as
    `<tmp>/main` with the data mirror beside it as `<tmp>/shared/data`, committed so `git status` starts clean."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    clone = tmp_path / "main"
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (clone / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, clone / f)
    (tmp_path / "shared").mkdir(); (tmp_path / "shared" / "data").symlink_to(data_dir.resolve())
    git = lambda *a: subprocess.run(["git", *a], cwd=clone, check=True, capture_output=True)
    git("init", "-q"); git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone")
    return clone


def git_status(clone: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True).stdout


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXREP_")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", **extra}


def readme_block(first_line_start: str) -> str:
    "The README's fenced bash block whose first line starts with `first_line_start`."
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if b.startswith(first_line_start))


def test_readme_smoke_command_verbatim_on_a_fresh_clone(tmp_path, data_dir):
    "Items 1-2: the README's own lines (export, mkdir, the smoke papermill command) as written; the clone stays clean."
    block = readme_block("export PREFIXREP_DATA_DIR=../shared/data HF_HUB_OFFLINE=1")
    lines = [l for l in block.splitlines() if l.startswith(("export ", "mkdir ")) or "-p profile smoke" in l]
    assert len(lines) == 3, lines
    clone = fresh_clone(tmp_path, data_dir)
    r = subprocess.run(["bash", "-euc", "\n".join(lines)], cwd=clone, env=clean_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (clone / "runs" / "smoke" / "reports" / "table2.md").exists()
    assert git_status(clone) == "", "a smoke run must not write into the committed results/ or reports/"


def test_cli_honours_relative_environment_paths_and_leaves_the_clone_clean(tmp_path, data_dir):
    "Items 1 and 3: relative $PREFIXREP_DATA_DIR / _RESULTS / _CACHE count from where the user typed `prefixrep run`."
    clone = fresh_clone(tmp_path, data_dir)
    env = clean_env(PREFIXREP_DATA_DIR="../shared/data", PREFIXREP_RESULTS="../out/results", PREFIXREP_CACHE="../out/cache")
    r = subprocess.run(["prefixrep", "run", "--profile", "smoke", "--experiments", "transfer"],
                       cwd=clone, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "all done" in r.stdout and (clone / "runs" / "smoke" / "transfer_seed0.ipynb").exists()
    assert len(list((tmp_path / "out" / "results" / "ledger").glob("*.json"))) > 30
    assert (tmp_path / "out" / "cache" / "features").is_dir()
    assert not (clone / "runs" / "smoke" / "results").exists() and not (clone / "artifacts").exists()
    assert git_status(clone) == ""


def test_a_bad_relative_data_dir_names_the_absolute_folder(tmp_path, monkeypatch):
    from prefixrep.data import resolve_data_dir
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        resolve_data_dir("nope")


def test_an_unreadable_ledger_record_is_named_moved_aside_and_recomputed(tmp_path, data_dir):
    "Item 4, through a real run: a record cut short is not a crash; the file is kept in quarantine/."
    from prefixrep.transfer import run_transfer
    res = tmp_path / "res"
    run = lambda: run_transfer(0, "smoke", data_dir, res, tmp_path / "cache", methods=("frozen",), progress=False)
    first = run()
    victim = sorted((res / "ledger").glob("*.json"))[0]
    good, cut = json.loads(victim.read_text()), victim.read_text()[:40]
    victim.write_text(cut)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run()
    assert any(str(victim) in str(w.message) and "moved to" in str(w.message) for w in caught)
    quarantined = list((res / "ledger" / "quarantine").glob(victim.name + ".*"))
    assert len(quarantined) == 1 and quarantined[0].read_text() == cut, "the unreadable record must be kept, not deleted"
    assert json.loads(victim.read_text())["score"] == good["score"]  # recomputed, same deterministic result
    assert first.score.tolist() == again.score.tolist()
    from prefixrep.core import Ledger
    assert victim.name in Ledger(res / "ledger").quarantine_note()


def test_install_brings_a_kernel_and_widgets_and_build_is_ignored():
    "Item 5: `prefixrep run` needs a Jupyter kernel after `pip install .`; tqdm needs ipywidgets in JupyterLab."
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    reqs = {re.split(r"[<>=!~\[]", r)[0] for r in cfg["DEFAULT"]["requirements"].split()}
    assert {"ipykernel", "ipywidgets", "papermill"} <= reqs
    for p in ("build/lib/prefixrep/core.py", "dist/prefixrep-0.1.0.tar.gz"):
        assert subprocess.run(["git", "check-ignore", "-q", p], cwd=ROOT).returncode == 0, f"{p} is not git-ignored"


@pytest.mark.parametrize("nb", ["05_transfer", "06_removal", "07_sequential", "12_curves", "14_transferability", "15_mechanism"])
def test_papermill_parameters_have_types_and_help(nb):
    "Item 6: `papermill --help-notebook` shows a type and a help line for every parameter."
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(ROOT / "nbs" / f"{nb}.ipynb")],
                         capture_output=True, text=True, check=True).stdout
    params = re.findall(r"^  (\w+): (.+?) \(default", out, flags=re.M)
    assert len(params) >= 9 and "Unknown type" not in out, out
    names = [p for p, _ in params]
    assert {"seeds" if nb in ("14_transferability", "15_mechanism") else "seed", "profile", "results_dir", "cache_dir"} <= set(names)
    if nb == "06_removal": assert {"max_removed", "keep_features"} <= set(names)
    from papermill.translators import PythonTranslator
    cell = next(c for c in json.loads((ROOT / "nbs" / f"{nb}.ipynb").read_text())["cells"]
                if "parameters" in c["metadata"].get("tags", []))
    found = PythonTranslator.inspect({"source": "".join(cell["source"])})
    assert [p.name for p in found] == names and all(p.help for p in found), "every parameter needs a one-line help"


def test_readme_names_what_works_offline_and_every_notebook():
    "Item 7."
    assert "sentence-transformers/all-MiniLM-L6-v2` from the PyPI" not in README and "`minilm`" in README
    for nb in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        assert f"`nbs/{nb.name}`" in README, f"{nb.name} is missing from the README's notebook table"
    tests = README.split("## Tests", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"\d+ min", tests), "the Tests section must state the test command's runtime"


def test_library_example_runs_after_a_non_editable_install_outside_the_checkout(tmp_path):
    "Item 8: the README's five lines, with the package installed (not editable) into a folder of its own."
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                        str(site), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    example = re.search(r"```python\n(from prefixrep import PrefixLibrary.*?)```", README, flags=re.S).group(1)
    assert len([l for l in example.splitlines() if l.strip()]) == 5
    code = example + "\nimport prefixrep; print('FROM', prefixrep.__file__); print('SHAPE', tuple(reps.cls.shape))\n"
    work = tmp_path / "elsewhere"; work.mkdir()
    r = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                       env=clean_env(PYTHONPATH=str(site), PYTHONNOUSERSITE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"FROM {site}" in r.stdout and "SHAPE (1, 384)" in r.stdout
    assert re.search(r"^\[[01], [01]\]$", r.stdout, flags=re.M), r.stdout
