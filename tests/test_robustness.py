"""Runs you can trust: atomic writes, NaN guard, parameter checks, determinism, the command line."""
import json
from pathlib import Path

import pytest
import torch

from prefixrep.core import atomic_write, write_json
from prefixrep.training import NonFiniteLoss, train_steps
from prefixrep.transfer import run_transfer
from prefixrep.experiment import check_params

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path):
    p = write_json(tmp_path / "r.json", {"score": 1})
    def broken(tmp):
        tmp.write_text('{"score": 2')  # half a record ...
        raise KeyboardInterrupt        # ... then the run is killed
    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, broken)
    assert json.loads(p.read_text()) == {"score": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"], "no temporary file is left behind"


def test_non_finite_loss_stops_the_unit_with_a_clear_message():
    w = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 3"):
        train_steps(lambda s: w.sum() * (float("nan") if s == 3 else 1.0), {}, [w], 10, 1e-3, 0.0, progress=False)


@pytest.mark.parametrize("kw,err,msg", [
    (dict(seed="0"), TypeError, "seed must be a non-negative integer"),
    (dict(seed=-1), TypeError, "seed must be a non-negative integer"),
    (dict(seed=True), TypeError, "seed must be a non-negative integer"),
    (dict(profile="huge"), ValueError, "Unknown profile 'huge'"),
    (dict(device="tpu"), ValueError, "device must be"),
    (dict(results_dir=3), TypeError, "results_dir must be a path"),
    (dict(data_dir="/nonexistent/mirror"), FileNotFoundError, "does not exist"),
    (dict(extract_dtype="float16"), ValueError, "extract_dtype must be one of"),
])
def test_bad_parameters_fail_early_with_a_clear_message(kw, err, msg):
    args = dict(seed=0, profile="smoke") | kw
    with pytest.raises(err, match=msg):
        check_params(**args)


def test_extract_dtype_parameter_reaches_the_profile():
    assert check_params(0, "smoke")["profile"].extract_dtype == "float32"
    assert check_params(0, "smoke", extract_dtype="bfloat16")["profile"].extract_dtype == "bfloat16"


def test_bad_papermill_parameter_fails_in_the_parameters_check(tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match="seed must be a non-negative integer"):
        pm.execute_notebook(str(ROOT / "nbs" / "05_transfer.ipynb"), str(tmp_path / "o.ipynb"), cwd=str(ROOT / "nbs"),
                            progress_bar=False, parameters=dict(seed="zero", profile="smoke", reports_dir=str(tmp_path)))


def test_same_seed_gives_the_same_numbers(tmp_path, data_dir):
    def run(d):
        r = run_transfer(0, "smoke", data_dir, tmp_path / d / "res", tmp_path / d / "cache", methods=("frozen", "prefix"),
                         progress=False)
        return r.set_index(["method", "task"])[["dev", "score"]]
    a, b = run("a"), run("b")
    assert a.equals(b)

# The command line's own run: tests/test_newcomer.py (relative environment paths, a fresh clone left clean).
