#!/usr/bin/env python
"""Build the notebooks as a website, offline: `python scripts/build_site.py` -> _site/ (open _site/index.html).

nbdev's `nbdev_docs` needs Quarto, which is not pip-installable; this renders the same notebooks with MkDocs +
mkdocs-jupyter (why those: the comment at the top of mkdocs.yml). Install the tools with `pip install -e ".[docs]"`.

Every page shows its notebook *with outputs*. The committed notebooks are stripped of outputs (nbdev_clean), so
each is first executed with papermill (cwd nbs/, like nbdev_test) into _site_build/nbs/:

* library notebooks (no `results_dir` parameter: 00-04, 08, index, ...): every cell except those carrying one of
  settings.ini's `tst_flags` (`#| slow`, `#| notest`) or `#| eval: false`, i.e. what `nbdev_test` runs. A skipped
  cell keeps its source and gets a note. (Measured: 6-20 s each on 2 cores; 10_library's `#| slow` cell would
  rewrite the shipped prefixrep/pretrained/ library, so skipping slow cells is also what keeps the checkout clean.)
* experiment notebooks (a `parameters` cell with `results_dir`: 05_transfer = Table 2, 06_removal = Table 3,
  07_sequential = Figure 2): *every* cell, with the parameters cell's defaults (the `small` profile), but with
  `results_dir` pointing at a temporary COPY of the committed results/, `cache_dir` at an empty temporary folder
  and `reports_dir` at a temporary folder, so the checkout's results/, artifacts/ and reports/ are never touched.
  `run_transfer` / `run_removal` / `run_sequential` find every unit of the committed ledger done (they only load
  and tokenise the data, and load the saved prefixes, before the ledger says "done"; the multi-task model is built
  lazily and never needed), so the tables and figures are computed from the committed records. Measured on 2 CPU
  cores: 05 in 2 min 12 s, 06 in 46 s, 07 in 47 s, no cache written, and the reports they wrote were byte-identical
  to reports/ (figure2.pdf aside: it embeds its creation time). That is cheap enough to execute rather than embed
  the committed reports. Each page says how it was produced: whether any unit was missing from the ledger (and so
  computed, into the temporary copy) and whether the reports it wrote match the committed ones.

Executions are reused while the notebook, prefixrep/, results/ and settings.ini are unchanged (`--force` re-runs
them); rendering alone takes seconds. A whole build from scratch: about 5 minutes on 2 cores (see the report).
Then `python scripts/check_site.py` checks the site in headless Chromium.
"""
from __future__ import annotations

import argparse
import configparser
import concurrent.futures as cf
import datetime as dt
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
NOT_COMPARED = {".pdf"}  # matplotlib's PDF embeds its creation date: never byte-identical
TMP_LABEL = "<temporary folder of the site build>"


def log(*a):
    print("[build_site]", *a, flush=True)


def settings() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def directives(cell) -> list[str]:
    "nbdev directives of a code cell (`#| slow`, `#| export`, ...): its leading `#|` lines, without the marker."
    out = []
    for line in cell.source.splitlines():
        if not line.strip(): continue
        if not line.startswith("#|"): break
        out.append(line[2:].strip())
    return out


def parameter_names(nb) -> list[str]:
    "Names assigned in the papermill `parameters` cell ([] when the notebook has none)."
    for c in nb.cells:
        if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []):
            return re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=\n]*)?=", c.source, flags=re.M)
    return []


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
            h.update(str(p.relative_to(path)).encode()); h.update(b"\0"); h.update(p.read_bytes()); h.update(b"\0")
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()


def tree_files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()} if path.is_dir() else {}


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}{' with uncommitted changes' if dirty else ''}" if head else "unknown"
    except Exception:
        return "unknown"


def prepare_input(src: Path, dst: Path, skip_flags: set[str], experiment: bool) -> list[int]:
    """Copy of `src` for execution: cells nbdev_test would skip (library notebooks only) get papermill/nbclient's
    `skip-execution` tag. Returns the indices of the skipped cells."""
    import nbformat
    nb = nbformat.read(src, as_version=4)
    skipped = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code": continue
        d = directives(c)
        never = any(re.fullmatch(r"eval:\s*false", x, flags=re.I) for x in d)
        if never or (not experiment and any(x in skip_flags for x in d)):
            c.metadata.setdefault("tags", []).append("skip-execution")
            skipped.append(i)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return skipped


# The parameters the committed reports were made with, where they differ from a notebook's defaults, so that the
# page finds every unit in the ledger: the committed reports' profile is `small-v1` (`small` moves to the learning
# curves' budgets), Table 2 on the pool evaluation sets has no fine-tuning row yet (it is rerun with dev-selected
# budgets) and skips the 512-token diagnosis heads (the README's "Reproduce" command says the same).
REPORT_PARAMETERS = {"05_transfer": {"profile": "small-v1", "methods": "frozen prefix multitask", "long_inputs": False},
                     "06_removal": {"profile": "small-v1"}, "07_sequential": {"profile": "small-v1"},
                     "12_curves": {"methods": ""},  # the curves page reports what the ledger holds; it trains nothing
                     "14_transferability": {"methods": ""},  # so do the transferability and mechanism pages
                     "15_mechanism": {"parts": ""}}


def execute(job: dict, env: dict, timeout: int) -> dict:
    "Run one notebook with papermill (a subprocess: one kernel per notebook); returns the job with its outcome."
    cmd = [sys.executable, "-m", "papermill", str(job["input"]), str(job["output"]), "--cwd", str(NBS),
           "-k", "python3", "--no-progress-bar", "--execution-timeout", str(timeout)]
    for k, v in job["parameters"].items(): cmd += ["-p", k, str(v)]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    job.update(seconds=round(time.time() - t0, 1), returncode=p.returncode,
               error=(p.stderr[-3000:] if p.returncode else ""))
    return job


def compare_reports(written: Path) -> dict:
    "Each file the execution wrote into its temporary reports folder against the committed reports/."
    out = {"identical": [], "differ": [], "new": [], "not_compared": []}
    if not written.is_dir(): return out
    for p in sorted(q for q in written.rglob("*") if q.is_file()):
        rel = str(p.relative_to(written))
        ref = ROOT / "reports" / rel
        if p.suffix in NOT_COMPARED: out["not_compared"].append(rel)
        elif not ref.exists(): out["new"].append(rel)
        elif ref.read_bytes() == p.read_bytes(): out["identical"].append(rel)
        else: out["differ"].append(rel)
    return out


def banner(name: str, info: dict) -> str:
    "The 'how this page was produced' note put under each page's title."
    when = f"executed by `scripts/build_site.py` on {info['executed']} (code: git {info['git']}) in {info['seconds']:.0f} s"
    if info.get("returncode"):
        when += " — **the execution stopped with an error (shown below; rendered with `--allow-errors`)**"
    if info["mode"] == "experiment":
        units = info["ledger_new"]
        led = ("every unit was found done in the committed ledger (none computed), so every table and figure below "
               "is computed from the committed records" if not units else
               f"**{len(units)} file(s) were missing from the committed ledger and were computed for this page** "
               f"(into the temporary copy): {', '.join(units[:10])}{' …' if len(units) > 10 else ''}")
        r = info["reports"]
        parts = []
        if r["identical"]: parts.append("identical to the committed `reports/`: " + ", ".join(f"`{x}`" for x in r["identical"]))
        if r["differ"]: parts.append("**different from the committed `reports/`**: " + ", ".join(f"`{x}`" for x in r["differ"]))
        if r["new"]: parts.append("not in the committed `reports/`: " + ", ".join(f"`{x}`" for x in r["new"]))
        if r["not_compared"]: parts.append("not compared (embeds its creation time): " + ", ".join(f"`{x}`" for x in r["not_compared"]))
        rep = "; ".join(parts) if parts else "none"
        extra = "".join(f", `{k}={v!r}`" for k, v in REPORT_PARAMETERS.get(name, {}).items())
        return (f"> **About this page.** `nbs/{name}.ipynb`, {when}: every cell, with the parameters cell's defaults "
                f"(`small` profile{extra}), `results_dir` pointing at a temporary copy of the committed `results/`, and "
                f"`cache_dir` and `reports_dir` at temporary folders (the checkout is never written). {led[0].upper() + led[1:]}. "
                f"Reports it wrote: {rep}.")
    skipped = info["skipped"]
    sk = (f"; {len(skipped)} cell(s) marked `#| slow` / `#| notest` / `#| eval: false` were not executed, as in "
          f"`nbdev_test` (each is marked below)") if skipped else ""
    return f"> **About this page.** `nbs/{name}.ipynb`, {when}, the way `nbdev_test` runs it (cwd `nbs/`){sk}."


def _scrub(obj, old: str, new: str):
    if isinstance(obj, str): return obj.replace(old, new)
    if isinstance(obj, list): return [_scrub(x, old, new) for x in obj]
    if isinstance(obj, dict): return {k: _scrub(v, old, new) for k, v in obj.items()}
    return obj


WIDGET = "application/vnd.jupyter.widget-view+json"


def widget_text(model_id: str, state: dict) -> str | None:
    """The final text of a tqdm notebook progress bar (an HBox of HTML, FloatProgress, HTML) from the notebook's saved
    widget state, e.g. 'removal subsets s0: 100%|##########| 22/22 [00:40<00:00, 1.8s/it]'; None if it is not one."""
    box = state.get(model_id, {}).get("state", {})
    parts = [state.get(str(ch).removeprefix("IPY_MODEL_"), {}).get("state", {}) for ch in box.get("children", [])]
    if len(parts) != 3 or "max" not in parts[1]: return None
    p = parts[1]
    frac = min(1.0, max(0.0, (p.get("value") or 0) / p["max"])) if p.get("max") else 0.0
    bar = "#" * round(10 * frac) + " " * (10 - round(10 * frac))
    text = f"{parts[0].get('value', '')}|{bar}|{parts[2].get('value', '')}"
    return html.unescape(text).replace("\u2007", " ").strip()  # tqdm pads with escaped HTML and figure spaces


def unwidget(outputs: list, state: dict) -> list:
    """Widget outputs (tqdm's notebook progress bars) as plain text: rendering a widget would make the page load the
    widget manager from a CDN (unpkg.com), and the site must work offline. The text is the bar's final state."""
    out = []
    for o in outputs:
        data = o.get("data", {})
        if WIDGET in data:
            text = widget_text(data[WIDGET].get("model_id", ""), state) or "".join(data.get("text/plain", ""))
            if not text.strip(): continue
            o = {"output_type": "stream", "name": "stderr", "text": text + "\n"}
        out.append(o)
    return out


def prepare_page(executed: Path, dst: Path, info: dict, tmp_root: str) -> None:
    """The page's notebook: nbdev directive lines and directive-only cells dropped (as nbdev's docs do), `#| hide`
    cells and papermill's injected-parameters cell dropped, links `x.ipynb` -> `x.html`, skipped cells annotated,
    widget outputs as text (see `unwidget`), temporary paths replaced by a label, and the 'about this page' note
    under the title."""
    import nbformat
    from nbformat.v4 import new_markdown_cell
    nb = nbformat.read(executed, as_version=4)
    widget_state = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    cells = []
    for i, c in enumerate(nb.cells):
        tags = c.metadata.get("tags", [])
        if "injected-parameters" in tags: continue
        if c.cell_type == "markdown":
            c.source = re.sub(r"\]\(((?:\.\./nbs/|nbs/)?)([\w.-]+)\.ipynb(#[^)]*)?\)",
                              lambda m: f"]({m.group(2)}.html{m.group(3) or ''})", c.source)
        elif c.cell_type == "code":
            d = directives(c)
            if "hide" in d: continue
            lines, k = c.source.splitlines(), 0
            while k < len(lines) and (lines[k].startswith("#|") or not lines[k].strip()): k += 1
            c.source = "\n".join(lines[k:])
            if "skip-execution" in tags:
                flag = next((x for x in d if x in ("slow", "notest") or x.startswith("eval")), "slow")
                cells.append(new_markdown_cell(f"*The next cell is marked `#| {flag}`: not executed for this page "
                                               f"(nor by `nbdev_test`).*"))
            if not c.source.strip() and not c.get("outputs"): continue
            outputs = unwidget(c.get("outputs", []), widget_state)
            c.outputs = [nbformat.from_dict(o) for o in _scrub(outputs, tmp_root, TMP_LABEL)]
        cells.append(c)
    first_md = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
    cells.insert(first_md + 1, new_markdown_cell(banner(info["name"], info)))
    nb.cells = cells
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)


def copy_assets(docs: Path) -> None:
    "MathJax from the pip package jupyter-server-mathjax (the site must not need a CDN) and the site's extra CSS."
    import jupyter_server_mathjax
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(src, docs / "assets" / "mathjax", dirs_exist_ok=True)
    shutil.copy2(ROOT / "scripts" / "site_extra.css", docs / "assets" / "extra.css")


def build_mkdocs(docs: Path, site: Path) -> list[str]:
    "mkdocs build of `docs` into `site` with mkdocs.yml; returns the warnings it logged."
    import logging
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    warnings = []
    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING: warnings.append(record.getMessage())
    handler = Collect()
    mk = logging.getLogger("mkdocs")
    mk.addHandler(handler); mk.setLevel(logging.INFO)
    try:
        cfg = load_config(str(ROOT / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(site))
        build(cfg)
    finally:
        mk.removeHandler(handler)
    return warnings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", type=Path, default=ROOT / "_site_build", help="executed notebooks and page sources")
    ap.add_argument("--site-dir", type=Path, default=ROOT / "_site", help="the site")
    ap.add_argument("--force", action="store_true", help="re-execute every notebook even if its execution is current")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1: the fastest on 2 cores)")
    ap.add_argument("--timeout", type=int, default=1800, help="papermill's per-cell timeout, seconds")
    ap.add_argument("--allow-errors", action="store_true", help="render notebooks whose execution failed (else exit 1)")
    ap.add_argument("--only", nargs="*", help="notebook names (stems) to build; default: every nbs/*.ipynb")
    a = ap.parse_args(argv)
    try:
        import mkdocs, mkdocs_jupyter, papermill, nbformat, jupyter_server_mathjax  # noqa: F401
    except ImportError as e:
        print(f"build_site: missing the docs tools ({e.name}): pip install -e '.[docs]'", file=sys.stderr)
        return 2
    t_all = time.time()
    s = settings()
    skip_flags = set(s.get("tst_flags", "").split())
    build, site = a.build_dir.resolve(), a.site_dir.resolve()
    # a relative $PREFIXREP_DATA_DIR (the README's `../shared/data`) counts from where this command was typed, not
    # from nbs/ where the notebooks run
    data_dir = str(Path(os.environ.get("PREFIXREP_DATA_DIR") or ROOT.parent / "shared" / "data").expanduser().resolve())
    tmp = Path(tempfile.mkdtemp(prefix="prefixrep-site-"))
    try:
        results_copy = tmp / "results"
        shutil.copytree(ROOT / "results", results_copy)
        before = tree_files(results_copy)
        (tmp / "cache").mkdir()
        env = {**os.environ, "PREFIXREP_DATA_DIR": data_dir, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
               # library notebooks use the defaults: aim those at the temporary copies too
               "PREFIXREP_RESULTS": str(results_copy), "PREFIXREP_CACHE": str(tmp / "cache")}
        code_hash = hashlib.sha256("".join([tree_hash(ROOT / "prefixrep"), tree_hash(ROOT / "results"),
                                            tree_hash(ROOT / "settings.ini"), data_dir]).encode()).hexdigest()
        names = [p.stem for p in sorted(NBS.glob("*.ipynb"))]
        if a.only: names = [n for n in names if n in set(a.only)]
        jobs, infos = [], {}
        for name in names:
            src = NBS / f"{name}.ipynb"
            nb = nbformat.read(src, as_version=4)
            params = parameter_names(nb)
            experiment = "results_dir" in params
            inp, out = build / "nbs" / "in" / f"{name}.ipynb", build / "nbs" / f"{name}.ipynb"
            stamp_file = build / "nbs" / f"{name}.json"
            stamp = hashlib.sha256((tree_hash(src) + code_hash).encode()).hexdigest()
            old = json.loads(stamp_file.read_text()) if stamp_file.exists() else {}
            if not a.force and out.exists() and old.get("stamp") == stamp and old.get("returncode") == 0:
                log(f"{name}: execution is current (reused; --force re-runs it)")
                infos[name] = old
                continue
            skipped = prepare_input(src, inp, skip_flags, experiment)
            parameters = {}
            if experiment:
                parameters = {"results_dir": results_copy, "cache_dir": tmp / "cache", "reports_dir": tmp / "reports" / name}
                parameters.update(REPORT_PARAMETERS.get(name, {}))
            jobs.append(dict(name=name, input=inp, output=out, stamp=stamp, stamp_file=stamp_file, skipped=skipped,
                             mode="experiment" if experiment else "library", parameters=parameters))
        failed = []
        with cf.ThreadPoolExecutor(max(1, a.jobs)) as pool:
            futs = {pool.submit(execute, j, env, a.timeout): j for j in jobs}
            log(f"executing {len(jobs)} notebook(s), {max(1, a.jobs)} at a time: {[j['name'] for j in jobs]}")
            for f in cf.as_completed(futs):
                j = f.result()
                log(f"{j['name']}: {'ok' if j['returncode'] == 0 else 'FAILED'} in {j['seconds']} s ({j['mode']}"
                    f"{', %d cell(s) skipped' % len(j['skipped']) if j['skipped'] else ''})")
                if j["returncode"]:
                    failed.append(j["name"]); print(j["error"], file=sys.stderr)
        after = tree_files(results_copy)
        ledger_new = sorted(k for k in after if before.get(k) != after[k])
        executed = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        git = git_state()
        for j in jobs:
            info = dict(name=j["name"], mode=j["mode"], stamp=j["stamp"], returncode=j["returncode"],
                        seconds=j["seconds"], skipped=j["skipped"], executed=executed, git=git,
                        ledger_new=ledger_new if j["mode"] == "experiment" else [],
                        reports=compare_reports(tmp / "reports" / j["name"]) if j["mode"] == "experiment" else {})
            j["stamp_file"].write_text(json.dumps(info, indent=1))
            infos[j["name"]] = info
        if ledger_new: log(f"WARNING: {len(ledger_new)} ledger/prefix file(s) were not in the committed results/ and "
                           f"were computed (into the temporary copy): {ledger_new[:5]}")
        for n, i in infos.items():
            if i.get("reports", {}).get("differ"): log(f"WARNING: {n} wrote reports that differ from reports/: {i['reports']['differ']}")
        if failed and not a.allow_errors:
            shutil.rmtree(site, ignore_errors=True)  # never leave an older site for check_site.py to pass
            log(f"execution failed: {failed} (see above; --allow-errors renders them anyway); {site} removed")
            return 1
        # pages
        docs = build / "docs"
        shutil.rmtree(docs, ignore_errors=True)
        for name in names:
            prepare_page(build / "nbs" / f"{name}.ipynb", docs / f"{name}.ipynb", infos[name], str(tmp))
        copy_assets(docs)
        t0 = time.time()
        shutil.rmtree(site, ignore_errors=True)
        warnings = build_mkdocs(docs, site)
        for w in warnings: log("mkdocs warning:", w)
        manifest = dict(built=dt.datetime.now().isoformat(timespec="seconds"), git=git, seconds=round(time.time() - t_all, 1),
                        render_seconds=round(time.time() - t0, 1), ledger_new=ledger_new, mkdocs_warnings=warnings,
                        notebooks={n: {k: infos[n][k] for k in ("mode", "seconds", "skipped", "executed", "reports")}
                                   for n in names})
        (site / "build_manifest.json").write_text(json.dumps(manifest, indent=1))
        log(f"site: {site} ({len(names)} pages; {manifest['seconds']} s in all, rendering {manifest['render_seconds']} s)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
