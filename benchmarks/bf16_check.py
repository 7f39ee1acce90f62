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
from prefixrep.transfer import METHOD_NAMES, check_params, latest_per_seed, profile_key, run_transfer

METHODS = ("frozen", "multitask", "prefix")


def compare(ledger: pd.DataFrame, profile: str, seeds: list[int], data_dir) -> pd.DataFrame:
    """Per (method, task): mean test accuracy (%) with fp32 and with bf16 representations over the seeds that have
    both, and the change; `Avg` per method over the seeds that have every target in both."""
    prof = get_profile(profile)
    def records(dtype: str) -> pd.DataFrame:
        key = profile_key(get_profile(profile, extract_dtype=dtype), data_dir)
        if ledger.empty: return pd.DataFrame(columns=["method", "task", "seed", "score", "cpu"])
        r = ledger[(ledger.profile_hash == key["profile_hash"]) & (ledger.data == key["data"])
                   & ledger.method.isin(METHODS) & ledger.seed.isin(seeds)]
        r = latest_per_seed(r, ["method", "task", "seed"])
        return r.assign(score=100 * r.score, cpu=r.get("cpu", pd.Series(index=r.index, dtype=object)))[
            ["method", "task", "seed", "score", "cpu"]]
    both = records("float32").merge(records("bfloat16"), on=["method", "task", "seed"], suffixes=("_fp32", "_bf16"))
    per = both.groupby(["method", "task"], as_index=False)[["score_fp32", "score_bf16"]].mean()
    full = both.groupby(["method", "seed"]).filter(lambda g: set(g.task) >= set(prof.target_tasks))
    avg = full.groupby(["method", "seed"], as_index=False)[["score_fp32", "score_bf16"]].mean() \
              .groupby("method", as_index=False)[["score_fp32", "score_bf16"]].mean().assign(task="Avg")
    out = pd.concat([per, avg], ignore_index=True).rename(columns={"score_fp32": "fp32", "score_bf16": "bf16"})
    out.attrs["cpus"] = {d: sorted(set(both[f"cpu_{d}"].fillna("not recorded"))) for d in ("fp32", "bf16")}
    return out.assign(change=out.bf16 - out.fp32)


def report(cmp: pd.DataFrame, profile: str, seeds: list[int]) -> str:
    "Markdown: one row per target, fp32 / bf16 / change per method; the largest changes stated in prose."
    if cmp.empty: raise ValueError("no method has both fp32 and bf16 records for these seeds")
    wide = cmp.pivot(index="task", columns="method", values=["fp32", "bf16", "change"])
    methods = [m for m in METHODS if ("fp32", m) in wide]
    order = [t for t in list(get_profile(profile).target_tasks) + ["Avg"] if t in wide.index]
    table = pd.DataFrame({f"{m} {k}": wide[(k, m)] for m in methods for k in ("fp32", "bf16", "change")}).reindex(order)
    per, avg = cmp[cmp.task != "Avg"], cmp[cmp.task == "Avg"].set_index("method").change
    worst = per.loc[per.change.abs().idxmax()]
    cpus = cmp.attrs.get("cpus", {})
    lines = [f"# bf16 autocast for fixed representations: score change on Table 2 (profile `{profile}`, seeds {seeds})", "",
             f"Records made on: fp32 {', '.join(cpus.get('fp32', ['?']))}; bf16 {', '.join(cpus.get('bf16', ['?']))} "
             f"(this report written on {cpu_model()}; bf16 is a fast path here: {fast_bf16()}). Every number is a ledger "
             "record (test accuracy, %, mean over the seeds that have both): the fp32 ones are Table 2's, the bf16 ones "
             "were scored by `benchmarks/bf16_check.py` (fp32 units it finds in the ledger are not rerun) with the same "
             "prefixes, multi-task model, target-head seeds and rows; only the dtype of the encoder pass differs. Columns: "
             f"{', '.join(f'`{m}` = {METHOD_NAMES.get(m, m)}' for m in methods)}.", "",
             table.round(2).to_markdown(), "",
             f"Largest change on one target: {worst.change:+.2f} points ({METHOD_NAMES.get(worst.method, worst.method)}, "
             f"{worst.task})." + (" Change of the average: " + ", ".join(f"{METHOD_NAMES.get(m, m)} {v:+.2f}" for m, v in avg.items())
                                  + " points." if len(avg) else " No method has every target in both dtypes yet: no average.")]
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
