"""`elastic report` on an MLflow store filled by tiny train/calibrate/evaluate runs of two methods: it
writes its four files, its table holds the numbers the runs logged (the curve read at fixed speed-ups,
the operating point, calibration's prediction), the HTML holds one front per method, the report run is
logged; filters narrow the rows and bad ones are one line, exit 2. Fast tests of the run selection on
hand-made run tables come first."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import write_synthetic_task
from test_cli import TINY, elastic, ok

from elastic_cli.config import ReportAxis, ReportConfig
from elastic_cli.errors import UserError
from elastic_cli.report import runs, table
from elastic_cli.report.curves import pareto_front, score_at
from elastic_cli.stages.report import REPORT_FILES

# --- the run selection, on hand-made tables of runs -------------------------------------------------------


def run_table(*runs_: dict) -> pd.DataFrame:
    """Runs as mlflow.search_runs returns them, latest first."""
    base = {"status": "FINISHED", "tags.elastic.backbone": "tiny-bert", "params.exit.name": "maxprob"}
    return pd.DataFrame([{**base, **r} for r in runs_])


def test_the_calibrated_run_of_a_setting_is_chosen_over_later_ones():
    group = run_table(
        {"run_id": "late", "params.exit.threshold_source": "config", "start_time": 3},
        {"run_id": "cal", "params.exit.threshold_source": "calibration", "start_time": 2},
        {"run_id": "old", "params.exit.threshold_source": "calibration", "start_time": 1},
    )
    assert runs._chosen(group)["run_id"] == "cal"
    assert runs._chosen(group.iloc[:1])["run_id"] == "late"  # none calibrated: the latest


def test_settings_that_differ_within_a_method_label_its_rows():
    found = run_table(
        {
            "run_id": "a",
            "tags.elastic.method": "elbert",
            "params.exit.window": "4",
            "params.exit.threshold": "0.5",
        },
        {
            "run_id": "b",
            "tags.elastic.method": "elbert",
            "params.exit.window": "8",
            "params.exit.threshold": "0.6",
        },
        {
            "run_id": "c",
            "tags.elastic.method": "sweet",
            "params.exit.window": None,
            "params.exit.threshold": "0.7",
        },
    )
    # the threshold differs too, but it is what a curve varies, not a setting
    assert runs._settings(found).tolist() == ["window=4", "window=8", ""]
    seeds = found.assign(**{"params.data.seed": ["1", "1", "2"], "tags.elastic.method": "sweet"})
    seeds["params.exit.window"] = None
    assert runs._settings(seeds).tolist() == ["seed=1", "seed=1", "seed=2"]
    # a model evaluated in int8 beside float32 runs, some logged before precision was a setting (no param)
    quantized = seeds.assign(**{"params.data.seed": "1", "params.device.quantize": [None, "none", "int8"]})
    assert runs._settings(quantized).tolist() == ["quantize=none", "quantize=none", "quantize=int8"]


def test_filters_keep_the_named_runs_and_name_what_the_store_holds():
    found = run_table(
        {"run_id": "a", "tags.elastic.method": "sweet", "tags.mlflow.parentRunId": "p"},
        {"run_id": "b", "tags.elastic.method": "pabee", "tags.elastic.backbone": "tiny-mpnet"},
    )
    assert runs.select(found, ReportConfig(methods=["pabee"]), "sst2")["run_id"].tolist() == ["b"]
    assert runs.select(found, ReportConfig(backbone="tiny-bert"), "sst2")["run_id"].tolist() == ["a"]
    assert runs.select(found, ReportConfig(parent="p"), "sst2")["run_id"].tolist() == ["a"]
    assert runs.select(found, ReportConfig(runs=["b"]), "sst2")["run_id"].tolist() == ["b"]
    with pytest.raises(UserError, match="report.methods has deebert.*choose among pabee, sweet"):
        runs.select(found, ReportConfig(methods=["deebert"]), "sst2")
    with pytest.raises(UserError, match="report.runs has zzz, not a finished evaluate run"):
        runs.select(found, ReportConfig(runs=["zzz"]), "sst2")
    with pytest.raises(UserError, match="report.parent=q has no finished evaluate run"):
        runs.select(found, ReportConfig(parent="q"), "sst2")
    with pytest.raises(UserError, match="no finished evaluate run"):
        runs.select(found.iloc[:0], ReportConfig(), "sst2")


def test_a_split_no_run_evaluated_is_one_line_naming_those_they_did():
    found = run_table({"run_id": "a", "metrics.validation/task_metric": 0.9, "metrics.task_metric": 0.9})
    runs.check_split(found, "validation")
    with pytest.raises(
        UserError, match="report.split=test: .* logged no test split; choose one of validation$"
    ):
        runs.check_split(found, "test")


def test_calibration_prediction_is_the_calibrate_run_that_chose_the_threshold():
    evaluate = run_table(
        {
            "run_id": "e",
            "start_time": 10,
            "params.exit.threshold": "0.7",
            "params.exit.threshold_source": "calibration",
            "params.checkpoint.weights": "w1",
        }
    ).iloc[0]
    calibrations = run_table(
        {
            "run_id": "after",
            "start_time": 11,
            "params.checkpoint.weights": "w1",
            "metrics.calibration/threshold": 0.7,
        },
        {
            "run_id": "other",
            "start_time": 9,
            "params.checkpoint.weights": "w2",
            "metrics.calibration/threshold": 0.7,
        },
        {
            "run_id": "t",
            "start_time": 8,
            "params.checkpoint.weights": "w1",
            "metrics.calibration/threshold": 0.7,
        },
        {
            "run_id": "u",
            "start_time": 7,
            "params.checkpoint.weights": "w1",
            "metrics.calibration/threshold": 0.6,
        },
    )
    chose = runs._calibration(calibrations, evaluate)
    assert chose is not None and chose["run_id"] == "t"
    assert runs._calibration(calibrations, evaluate.replace({"calibration": "config"})) is None


class _NoArtifacts:
    """A client whose runs logged no artifact."""

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        from mlflow.exceptions import MlflowException

        raise MlflowException(f"no {path} in run {run_id}")


def test_a_run_without_a_curve_is_a_row_without_one_and_a_note():
    found = run_table(
        {
            "run_id": "r1",
            "tags.elastic.method": "sweet",
            "start_time": 1,
            "params.exit.threshold": "0.9",
            "params.exit.threshold_source": "config",
            "metrics.validation/accuracy": 0.8,
            "metrics.validation/flops_speedup": 2.0,
        }
    )
    rows, notes = runs.rows(_NoArtifacts(), found, found.iloc[:0], "validation")  # type: ignore[arg-type]
    assert [r.label for r in rows] == ["sweet"] and rows[0].curve is None
    assert notes == [
        "sweet on tiny-bert: run r1 logged no validation/threshold_curve.csv (evaluate.grid=false, or "
        "another split): its curve is left out"
    ]
    drawn = table.series(rows[0], table.AXES[ReportAxis.flops], "validation", "accuracy")
    assert drawn.points.empty and drawn.operating == (2.0, 0.8, "evaluated t=0.90")


def test_markdown_cells_say_n_a_and_round_by_kind():
    assert table.cell("accuracy @3x", float("nan")) == "n/a"
    assert table.cell("accuracy @2x", 0.87654) == "0.8765"
    assert table.cell("FLOPs x", 2.3456) == "2.35"
    assert table.cell("vs elasticbert", 0.02) == "+0.0200"
    assert table.cell("mean accuracy 1.00-2.50x", 0.81234) == "0.8123"
    assert table.cell("threshold", 0.9) == "0.90"


# --- end to end -------------------------------------------------------------------------------------------

METHODS = ("early_exit", "pabee")
STAGE_ARGS = [a for a in TINY if not a.startswith(("method=", "train."))]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two methods trained, calibrated and evaluated; early_exit also evaluated at a fixed threshold."""
    root = tmp_path_factory.mktemp("report")
    write_synthetic_task(root / "data", n_train=600, n_dev=160, seed=1)
    data = f"task.data_dir={root / 'data'}"
    args = [a for a in TINY if not a.startswith("method=")]
    for method in METHODS:
        ok(elastic("train", f"method={method}", *args, data, cwd=root))
        ok(elastic("calibrate", f"method={method}", *STAGE_ARGS, data, cwd=root))
        ok(elastic("evaluate", f"method={method}", *STAGE_ARGS, data, cwd=root))
    ok(elastic("evaluate", "method=early_exit", "method.exit.threshold=0.99", *STAGE_ARGS, data, cwd=root))
    return root


def mlflow_runs(root: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["sst2"], output_format="pandas")


def logged_curve(root: Path, run_id: str) -> pd.DataFrame:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    return pd.read_csv(
        client.download_artifacts(run_id, "validation/threshold_curve.csv", str(root / run_id))
    )


def report_folder(proc) -> Path:
    """The folder the report says it wrote (its terminal output is on stderr, like every stage's)."""
    line = next(line for line in proc.stderr.splitlines() if line.startswith("wrote report.csv"))
    return Path(line.rsplit(" to ", 1)[1].strip())


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        self._in = tag == "script"

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in:
            self.scripts.append(data)


def plotly_traces(html: str) -> list[dict]:
    """The traces of the page's Plotly.newPlot call, decoded from its JSON."""
    parser = _Scripts()
    parser.feed(html)
    parser.close()
    call = next(s for s in parser.scripts if "Plotly.newPlot(" in s)
    after_id = call.index("[", call.index("Plotly.newPlot("))
    traces, _ = json.JSONDecoder().raw_decode(call[after_id:])
    return traces


@pytest.mark.slow
def test_report_writes_its_files_with_the_logged_numbers(store: Path):
    proc = ok(elastic("report", "task=sst2", "report.reference=early_exit", cwd=store))
    folder = report_folder(proc)
    assert folder.parent == store / "outputs" / "reports"
    for name in REPORT_FILES:
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    found = pd.read_csv(folder / "report.csv")
    assert sorted(found["method"]) == sorted(METHODS)

    logged = mlflow_runs(store)
    for _, row in found.iterrows():
        run = logged[logged["run_id"] == row["run"]].iloc[0]
        # the calibrated run of the method, not the later fixed-threshold one
        assert run["params.exit.threshold_source"] == "calibration"
        curve = logged_curve(store, row["run"])
        expected = score_at(pareto_front(curve), [1.5, 2.0, 3.0, 4.0])
        got = [row[f"accuracy @{s:g}x"] for s in (1.5, 2.0, 3.0, 4.0)]
        np.testing.assert_allclose(got, expected, equal_nan=True)
        assert row["accuracy"] == pytest.approx(run["metrics.validation/accuracy"])
        assert row["FLOPs x"] == pytest.approx(run["metrics.validation/flops_speedup"])
        assert row["latency x"] == pytest.approx(run["metrics.latency_speedup_mean"])
        assert row["full depth"] == pytest.approx(run["metrics.validation/exit_accuracy_L4"])
        assert row["oracle FLOPs x"] == pytest.approx(
            run["metrics.validation/oracle_consistency_flops_speedup"]
        )
        calibrate = logged[
            (logged["tags.elastic.stage"] == "calibrate") & (logged["tags.elastic.method"] == row["method"])
        ].iloc[0]
        assert row["predicted accuracy"] == pytest.approx(calibrate["metrics.calibration/score"])
        assert row["threshold"] == pytest.approx(calibrate["metrics.calibration/threshold"])
    # the reference scores 0 against itself
    assert found.set_index("method").loc["early_exit", "vs early_exit"] == pytest.approx(0.0, abs=1e-12)
    md = (folder / "report.md").read_text()
    assert "| early_exit | tiny-bert | maxprob |" in md
    assert "made by `elastic report task=sst2 report.reference=early_exit`" in md  # to paste beside it

    traces = plotly_traces((folder / "report.html").read_text())
    fronts = [t for t in traces if t.get("meta") == "front"]
    assert sorted(t["name"] for t in fronts) == sorted(METHODS)
    assert {t["legendgroup"] for t in traces} == set(METHODS)
    assert any(t.get("meta") == "oracle_consistency" for t in traces)
    assert "threshold %{customdata[0]}" in fronts[0]["hovertemplate"]

    report_run = logged[logged["tags.elastic.stage"] == "report"].iloc[0]
    assert report_run["status"] == "FINISHED"
    from mlflow import MlflowClient

    artifacts = MlflowClient(f"sqlite:///{store / 'outputs' / 'mlflow.db'}").list_artifacts(
        report_run["run_id"]
    )
    assert sorted(a.path for a in artifacts) == sorted([*REPORT_FILES, "config.yaml"])


@pytest.mark.slow
def test_report_filters_and_the_latency_axis(store: Path):
    proc = ok(elastic("report", "report.methods=[pabee]", cwd=store))
    found = pd.read_csv(report_folder(proc) / "report.csv")
    assert found["method"].tolist() == ["pabee"]
    assert "no ELUE-style column" in proc.stderr  # elasticbert, the default reference, was not evaluated

    # measured points: early_exit was evaluated at two thresholds, each with its latency
    proc = ok(elastic("report", "report.x=latency", "report.methods=[early_exit]", cwd=store))
    folder = report_folder(proc)
    traces = plotly_traces((folder / "report.html").read_text())
    thresholds = next(t for t in traces if t.get("meta") == "thresholds")
    logged = mlflow_runs(store)
    evaluated = logged[
        (logged["tags.elastic.stage"] == "evaluate") & (logged["tags.elastic.method"] == "early_exit")
    ]
    assert sorted(thresholds["x"]) == pytest.approx(sorted(evaluated["metrics.latency_speedup_mean"]))
    assert not any(t.get("meta", "").startswith("oracle") for t in traces)  # no latency for an oracle


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, says",
    [
        (["report.methods=[nope]"], "report.methods has nope, with no finished evaluate run here"),
        (["task=rte"], "has no experiment 'rte'"),
        # (the other filters are tested on run tables above, the settings' ranges in test_config.py)
        pytest.param(
            ["report.backbone=mpnet-base"], "report.backbone has mpnet-base", marks=pytest.mark.extended
        ),
        pytest.param(
            ["report.speedups=[0.5]"], "report.speedups=0.5 must be >= 1", marks=pytest.mark.extended
        ),
    ],
)
def test_bad_report_settings_are_one_line(store: Path, args: list[str], says: str):
    proc = elastic("report", *args, cwd=store)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_report_without_a_store_says_so_and_creates_none(tmp_path: Path):
    proc = elastic("report", "task=sst2", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no MLflow store at" in proc.stderr and "run `elastic evaluate` first" in proc.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
