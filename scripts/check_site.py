#!/usr/bin/env python
"""Check the built site (scripts/build_site.py -> _site/) in a real headless browser: `python scripts/check_site.py`.

Serves the site on localhost (http.server, a free port) and drives Debian's Chromium through its chromedriver with
Selenium (`pip install -e ".[docs]"`; `apt-get install chromium chromium-driver`): the simplest robust way here to
run JavaScript in the page (an <img>'s naturalWidth, MathJax) and take screenshots, with no browser download
(Selenium Manager is never used: the driver path is given). Exits non-zero with a message per failed check:

* every notebook in nbs/ has a page, and every local link on the home page (index.ipynb) resolves;
* Table 2 (05_transfer): a <table> with "Prefix-based" and "rte" in it, the prefix row's rte cell starting with
  the number in the committed reports/table2.csv (so the page shows the committed ledger's table), and the whole
  table fitting the page (a 1920 px wide window) rather than cut off on the right;
* Table 3 (06_removal): a <table> with "Multi-tasking" and "rte" in it;
* Figure 2 (07_sequential): an output <img> that has loaded (naturalWidth > 0);
* 02_prefix: MathJax (served from the site, not a CDN) has typeset the formulas;
* no page asks for anything but localhost (the site works offline).

Screenshots: <site>/screenshot_table2.png (Table 2 scrolled into view) and <site>/screenshot_figure2.png.
"""
from __future__ import annotations

import argparse
import csv
import functools
import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1920,1200", "--hide-scrollbars"]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        "The browser closes connections it no longer needs (a page left mid-load): not an error of the site."
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def serve(site: Path):
    httpd = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def expected_table2_cell() -> str | None:
    "The prefix row's rte mean in the committed reports/table2.csv, as the page shows it ('%.2f')."
    p = ROOT / "reports" / "table2.csv"
    if not p.exists(): return None
    for r in csv.DictReader(p.open()):
        if r["method"] == "prefix" and r["task"] == "rte": return f"{float(r['mean']):.2f}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--site-dir", type=Path, default=ROOT / "_site")
    ap.add_argument("--timeout", type=float, default=30, help="seconds to wait for a page (and MathJax)")
    a = ap.parse_args(argv)
    site = a.site_dir.resolve()
    for path, what in ((CHROMIUM, "apt-get install chromium"), (CHROMEDRIVER, "apt-get install chromium-driver")):
        if not Path(path).exists():
            print(f"check_site: {path} not found ({what})", file=sys.stderr); return 2
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        print("check_site: selenium missing: pip install -e '.[docs]'", file=sys.stderr); return 2
    if not (site / "index.html").exists():
        print(f"check_site: no site at {site}: run python scripts/build_site.py first", file=sys.stderr); return 2

    failures, notes = [], []
    def check(ok: bool, msg: str):
        (notes if ok else failures).append(("ok  " if ok else "FAIL") + " " + msg)

    # every notebook has a page
    missing = [p.stem for p in sorted((ROOT / "nbs").glob("*.ipynb")) if not (site / f"{p.stem}.html").exists()]
    check(not missing, f"a page per notebook in nbs/{' (missing: ' + ', '.join(missing) + ')' if missing else ''}")

    httpd, base = serve(site)
    profile = Path(tempfile.mkdtemp(prefix="prefixrep-chromium-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={profile}"]: opts.add_argument(f)
    t0 = time.time()
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(a.timeout)
    external = {}
    def load(page: str):
        driver.get(f"{base}/{page}")
        ext = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(u => !u.startsWith(arguments[0]))", base)
        if ext: external[page] = ext
    try:
        # home page: the local links resolve
        load("index.html")
        links = driver.execute_script(
            "return [...document.querySelectorAll('article a[href]')].map(a => a.href).filter(h => h.startsWith(arguments[0]))", base)
        broken = []
        for h in sorted(set(x.split("#")[0] for x in links)):
            try:
                with urllib.request.urlopen(h, timeout=10) as r: ok = r.status == 200
            except Exception: ok = False
            if not ok: broken.append(h[len(base):])
        nb_links = [h for h in links if h.endswith(".html") and "/index.html" not in h]
        check(len(nb_links) >= 9 and not broken,
              f"home page: {len(nb_links)} links to notebook pages, all resolve{' (broken: ' + ', '.join(broken) + ')' if broken else ''}")

        # Table 2
        load("05_transfer.html")
        want = expected_table2_cell()
        tables = driver.find_elements(By.CSS_SELECTOR, "article table")
        t2 = [t for t in tables if "Prefix-based" in t.text and "rte" in t.text.lower()]
        check(bool(t2), f"Table 2 page: a <table> with 'Prefix-based' and 'rte' ({len(tables)} tables on the page)")
        if t2:
            t = t2[-1]
            cell = driver.execute_script("""
                const t = arguments[0], head = [...t.querySelectorAll('thead tr:first-child th')].map(x => x.textContent.trim());
                const col = head.findIndex(x => x.toLowerCase() === 'rte');
                const row = [...t.querySelectorAll('tbody tr')].find(r => r.textContent.includes('Prefix-based'));
                return row && col > 0 ? row.children[col].textContent.trim() : null;""", t)
            check(want is not None and cell is not None and cell.startswith(want),
                  f"Table 2 page: the prefix row's rte cell is {cell!r}; reports/table2.csv says {want}")
            clip = driver.execute_script("""
                const t = arguments[0], box = (t.closest('.jp-OutputArea-output') || t.parentElement).getBoundingClientRect();
                return [Math.round(t.getBoundingClientRect().right - box.right), t.querySelectorAll('thead tr:first-child th').length];""", t)
            check(clip[0] <= 1, f"Table 2 page: the whole table ({clip[1]} columns) fits the page at 1920 px"
                                f"{'' if clip[0] <= 1 else f' ({clip[0]} px cut off on the right)'}")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", t)
            time.sleep(0.5)
            driver.save_screenshot(str(site / "screenshot_table2.png"))

        # Table 3
        load("06_removal.html")
        t3 = [t for t in driver.find_elements(By.CSS_SELECTOR, "article table")
              if "Multi-tasking" in t.text and "rte" in t.text.lower()]
        check(bool(t3), "Table 3 page: a <table> with 'Multi-tasking' and 'rte'")

        # Figure 2
        load("07_sequential.html")
        imgs = driver.execute_script("""
            return [...document.querySelectorAll('article .jp-OutputArea-output img, article img')]
                   .map(i => ({w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, src: i.src.slice(0, 30)}));""")
        loaded = [i for i in imgs if i["complete"] and i["w"] > 0]
        check(bool(loaded), f"Figure 2 page: an output image loaded ({len(loaded)} of {len(imgs)} images; "
                            f"first {loaded[0]['w']}x{loaded[0]['h']} px)" if loaded else
                            f"Figure 2 page: an output image loaded (0 of {len(imgs)} images)")
        if loaded:
            driver.execute_script("""const i = [...document.querySelectorAll('article img')].filter(i => i.naturalWidth > 0).pop();
                                     i.scrollIntoView({block: 'center'});""")
            time.sleep(0.5)
            driver.save_screenshot(str(site / "screenshot_figure2.png"))

        # MathJax, served locally
        load("02_prefix.html")
        end, typeset = time.time() + a.timeout, 0
        while time.time() < end:
            typeset = driver.execute_script("return document.querySelectorAll('.MathJax, .MathJax_Display, mjx-container').length")
            if typeset: break
            time.sleep(0.5)
        check(typeset > 0, f"02_prefix page: MathJax typeset {typeset} formulas")

        check(not external, "no page requests anything but localhost"
              + (": " + json.dumps(external) if external else ""))
    finally:
        driver.quit()
        httpd.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    for n in notes + failures: print(n)
    print(f"check_site: {len(notes)} ok, {len(failures)} failed, browser {time.time() - t0:.1f} s; screenshots in {site}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
