"""Does computing the fixed representations under bf16 autocast change Table 2? Scores Table 2's frozen, multi-task and
prefix-based rows for the given seeds with `extract_dtype="bfloat16"` (same prefixes, same multi-task model, same
target heads and seeds: only the dtype of the encoder pass differs), beside the fp32 records of the same seeds.

    python benchmarks/bf16_check.py [--seeds 0] [--profile small] [--out reports/bf16_check.md] [--results-dir D]

The bf16 units are ledger records of their own (the dtype is part of their key), so the run resumes, and Table 2,
which reads only fp32 records, is untouched. Needs the offline mirror ($PREFIXREP_DATA_DIR) and MiniLM.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from prefixrep.core import Store, cpu_model, fast_bf16, get_profile
from prefixrep.transfer import METHOD_NAMES, check_params, run_transfer, table2

METHODS = ("frozen", "multitask", "prefix")


def compare(ledger: pd.DataFrame, profile: str, seeds: list[int], data_dir) -> pd.DataFrame:
    "Per (method, task): mean test accuracy (%) over `seeds` with fp32 and with bf16 representations, and the change."
    led = ledger[ledger.seed.isin(seeds)] if len(ledger) else ledger
    cols = {}
    for dtype in ("float32", "bfloat16"):
        t = table2(led, get_profile(profile, extract_dtype=dtype), data_dir)
        t = t[t.method.isin(METHODS)] if len(t) else t
        cols[dtype] = t.set_index(["method", "task"])["mean"] if len(t) else pd.Series(dtype=float)
    out = pd.DataFrame({"fp32": cols["float32"], "bf16": cols["bfloat16"]}).dropna()
    return out.assign(change=out.bf16 - out.fp32).reset_index()


def report(cmp: pd.DataFrame, profile: str, seeds: list[int]) -> str:
    "Markdown: one row per target, fp32 / bf16 / change per method; the largest changes stated in prose."
    if cmp.empty: raise ValueError("no method has both fp32 and bf16 records for these seeds")
    wide = cmp.pivot(index="task", columns="method", values=["fp32", "bf16", "change"])
    order = [t for t in get_profile(profile).target_tasks if t in wide.index] + ["Avg"]
    table = pd.DataFrame({f"{m} {k}": wide[(k, m)] for m in METHODS if ("fp32", m) in wide
                          for k in ("fp32", "bf16", "change")}).reindex([t for t in order if t in wide.index])
    per = cmp[cmp.task != "Avg"]
    worst = per.loc[per.change.abs().idxmax()] if len(per) else None
    avg = cmp[cmp.task == "Avg"].set_index("method").change
    lines = [f"# bf16 autocast for fixed representations: score change on Table 2 (profile `{profile}`, seeds {seeds})", "",
             f"Machine: {cpu_model()}; bf16 is a fast path here: {fast_bf16()}. Every number "
             "is a ledger record (test accuracy, %, mean over the seeds): the fp32 ones are Table 2's, the bf16 ones were "
             "scored by `benchmarks/bf16_check.py` (fp32 units it finds in the ledger are not rerun) with the same prefixes, multi-task model, target heads and seeds. "
             f"Columns: {', '.join(f'`{m}` = {METHOD_NAMES.get(m, m)}' for m in METHODS)}.", "",
             table.round(2).to_markdown(), ""]
    if worst is not None:
        lines.append(f"Largest change on one target: {worst.change:+.2f} points ({METHOD_NAMES.get(worst.method, worst.method)}, "
                     f"{worst.task}); change of the average: " + ", ".join(f"{METHOD_NAMES.get(m, m)} {v:+.2f}" for m, v in avg.items())
                     + " points.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--profile", default="small")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default="reports/bf16_check.md")
    ap.add_argument("--results-dir", help="ledger root (default: the repo's results/)")
    ap.add_argument("--cache-dir", help="cache root (default: the repo's artifacts/)")
    a = ap.parse_args()
    for s in a.seeds:
        for dtype in ("float32", "bfloat16"):  # fp32: Table 2's own records, found in the ledger if that seed ran
            run_transfer(s, get_profile(a.profile, extract_dtype=dtype), results_dir=a.results_dir,
                         cache_dir=a.cache_dir, methods=a.methods)
    p = check_params(a.seeds[0], a.profile, results_dir=a.results_dir, cache_dir=a.cache_dir)
    cmp = compare(Store(p["results_dir"], p["cache_dir"]).ledger.frame(), a.profile, a.seeds, p["data_dir"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(report(cmp, a.profile, a.seeds))
    print(Path(a.out).read_text())


if __name__ == "__main__":
    main()
