"""The development suite (benchmarks/quality_suite.py) in its --quick mode: one table with every column and
sensible values for every requested dataset, one JSONL row per run, and --resume keeps finished runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality_suite  # noqa: E402

COLUMNS = ["dataset", "K", "cells", "seeds", "ARI", "ACC", "NMI", "agreement", "used", "start (merged)", "start ARI",
           "confidence", "state abs rho (activity)", "Leiden ARI", "Leiden ACC", "s/run (CPU)"]


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "suite"
    argv = ["--quick", "--datasets", "sim10", "sim40", "--trace", "--set", "eval_every=10", "--out", str(out)]
    quality_suite.main(argv)
    return out, argv


def test_quick_suite_writes_one_table_with_every_column_for_every_dataset(quick_suite):
    out, _ = quick_suite
    lines = out.with_suffix(".md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| dataset"))
    assert [cell.strip() for cell in lines[start].strip("|").split("|")] == COLUMNS
    table = lines[start + 2 : lines.index("", start)]
    rows = {line.split("|")[1].strip(): line for line in table}
    assert set(rows) == {"sim10", "sim40"}
    assert all(line.count("|") == len(COLUMNS) + 1 and "(no runs)" not in line for line in rows.values())
    assert any(line.startswith("Mean rank by ARI over 2 datasets") for line in lines)
    timing = next(i for i, line in enumerate(lines) if line.startswith("| dataset | set-up CPU s"))
    assert [line.split("|")[1].strip() for line in lines[timing + 2 : timing + 4]] == ["sim10", "sim40"]

    report = json.loads(out.with_suffix(".json").read_text())
    table = report["summary"]["datasets"]
    assert set(table) == {"sim10", "sim40"}
    for name, entry in table.items():
        k = quality_suite.DATASETS[name].quick_types
        assert entry["k"] == k and entry["seeds"] == [0]
        for key in ("ari", "consensus_ari", "init_ari", "leiden_ari"):
            assert -1.0 <= entry[key]["mean"] <= 1.0, (name, key)
        for key in ("acc", "nmi", "agreement", "state_rho_median", "state_rho_activity_median", "leiden_acc"):
            assert 0.0 <= entry[key]["mean"] <= 1.0, (name, key)
        assert 1 <= entry["categories_used"]["mean"] <= k and 1 <= entry["start_categories"]["mean"] <= k
        assert 0 <= entry["start_categories_merged"]["mean"] < entry["start_categories"]["mean"]
        assert 1.0 / k <= entry["confidence_median"]["mean"] <= 1.0  # a max probability over K categories
        assert entry["leiden_k"]["mean"] == k  # the resolution was bisected to K
        assert entry["init_ari"]["mean"] > 0.5  # separable simulated types: the Leiden start finds them
        assert entry["init_ari_arms"]["mean"] > 0.5  # and each arm's start does
    ranks = report["summary"]["mean_rank"]
    assert 1.0 <= ranks["cpl-mixVAE"] <= 2.0 and ranks["cpl-mixVAE"] + ranks["Leiden"] == pytest.approx(3.0)


def test_each_run_is_a_jsonl_row_with_its_trace(quick_suite):
    out, _ = quick_suite
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [(row["dataset"], row["seed"]) for row in rows] == [("sim10", 0), ("sim40", 0)]
    for row in rows:
        assert row["steps"] == quality_suite.QUICK_STEPS and row["options"] == {"eval_every": 10}
        assert [point["step"] for point in row["trace"]] == [10, 20, 30]
        last = row["trace"][-1]
        assert len(last["arm_ari"]) == 2 and last["categories_used_per_arm"] == row["categories_used_per_arm"]
        assert last["consensus_ari"] == pytest.approx(row["consensus_ari"])  # every cell scored: the final typing
        assert last["validation_loss"] > 0
        assert len(row["init_ari_per_arm"]) == 2  # each arm's start, the first the start ARI of the row
        assert row["init_ari_per_arm"][0] == pytest.approx(row["init_ari"])
    cache = json.loads((out.parent / "quality_suite_leiden_quick.json").read_text())
    assert len(cache) == 2 and all(set(entry["runs"]) == {"0"} for entry in cache.values())


def test_resume_keeps_finished_runs_and_the_cached_baseline(quick_suite):
    out, argv = quick_suite
    before = out.with_suffix(".jsonl").read_text()
    report_before = json.loads(out.with_suffix(".json").read_text())
    quality_suite.main([*argv, "--resume"])
    assert out.with_suffix(".jsonl").read_text() == before  # nothing trained again
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["runs"] == report_before["runs"] and report["leiden"] == report_before["leiden"]


def test_report_only_tables_the_finished_runs_trains_nothing_and_lists_the_missing_ones(quick_suite):
    out, argv = quick_suite
    gathered = out.parent / "gathered"  # same folder: the cached Leiden baselines are reused
    gathered.with_suffix(".jsonl").write_text(out.with_suffix(".jsonl").read_text())
    before = gathered.with_suffix(".jsonl").read_text()
    options = argv[:-2]  # without "--out OUT"
    assert options[2:4] == ["sim10", "sim40"]
    quality_suite.main([*options[:4], "sim120", *options[4:], "--out", str(gathered), "--report-only"])
    assert gathered.with_suffix(".jsonl").read_text() == before  # nothing trained
    report = json.loads(gathered.with_suffix(".json").read_text())
    seeds = {name: entry["seeds"] for name, entry in report["summary"]["datasets"].items()}
    assert seeds == {"sim10": [0], "sim40": [0], "sim120": []}
    assert report["summary"]["datasets"]["sim10"]["ari"]["mean"] == pytest.approx(json.loads(before.splitlines()[0])["ari"])
    lines = gathered.with_suffix(".md").read_text().splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("| dataset")) + 2:]
    assert [line.split("|")[4].strip() for line in table[:2]] == ["0", "0"]  # the seeds column says what was there
    assert "(no runs)" in table[2]
    assert ("Not run (--report-only: not in the JSONL with this configuration): sim120 seed 0, "
            "sim120 (scanpy + Leiden) seed 0.") in lines


def test_a_run_from_before_an_option_existed_still_counts_but_not_one_with_another_value(quick_suite):
    out, argv = quick_suite
    from cplmix_explorer.train.checkpoint import OPTIONS_OLDER_CHECKPOINTS_LACK

    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    config = rows[0]["setup"]["config"]  # every option is recorded, the defaults included
    assert config["lam"] == quality_suite.run_config(4, quality_suite.DATASETS["sim10"], 0, 30, {})["lam"]
    # an option whose default still behaves as the runs before it did
    option = next(name for name, before in OPTIONS_OLDER_CHECKPOINTS_LACK.items() if config[name] == before)
    del rows[0]["setup"]["config"][option]  # sim10: trained before the option existed
    rows[1]["setup"]["config"]["lam"] *= 2  # sim40: trained with another coupling weight than the one asked
    older = out.parent / "older"  # same folder: the cached Leiden baselines are reused
    older.with_suffix(".jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    quality_suite.main([*argv[:-2], "--out", str(older), "--report-only"])
    report = json.loads(older.with_suffix(".json").read_text())
    assert {name: entry["seeds"] for name, entry in report["summary"]["datasets"].items()} == {"sim10": [0], "sim40": []}
    assert report["not_run"] == ["sim40 seed 0"]


def test_a_failed_run_is_reported_and_the_suite_exits_non_zero(quick_suite, capsys):
    out, _ = quick_suite
    failing = out.parent / "failing"  # same folder: the cached Leiden baseline is reused
    with pytest.raises(SystemExit) as exit_info:
        quality_suite.main(["--quick", "--datasets", "sim10", "--set", "augment=generative", "--out", str(failing)])
    assert exit_info.value.code == 1
    assert "1 run(s) failed (sim10, seed 0: CplmixError: augment 'generative' needs a trained augmenter" in capsys.readouterr().err
    assert "sim10, seed 0 failed: CplmixError" in failing.with_suffix(".md").read_text()
    row = json.loads(failing.with_suffix(".jsonl").read_text())
    assert row["error"].startswith("CplmixError") and "ari" not in row


def test_bad_options_are_one_line_errors(capsys):
    for argv, message in [
        (["--set", "nope=1"], "--set: unknown option(s): nope"),
        (["--set", "n_types=5"], "--set cannot change n_types"),
        (["--datasets", "nope"], "invalid choice: 'nope'"),
        (["--jobs", "0"], "--threads and --jobs must be at least 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            quality_suite.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
