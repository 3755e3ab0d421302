"""Damaged or edited checkpoint files end in one line naming the file and what to do, exit code 2, never a
traceback: model.safetensors, meta.json, calibration.json, cascade.json, backbone/ (config and tokenizer)
and the checkpoint a `train.init_from` starts from.

One tiny checkpoint is trained (and calibrated) once through the CLI; each case corrupts a copy of it.
Most cases call the reading functions in-process; a few run `elastic evaluate` end to end."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from synthetic import write_synthetic_task
from test_cli import TINY, _one_line_error, elastic, ok

from elastic_cli import checkpoint
from elastic_cli.checks import to_root
from elastic_cli.errors import UserError
from elastic_cli.methods import build_method
from elastic_cli.plugins import register_configs
from elastic_cli.stages import init_from, subjects

CONF = Path(__file__).resolve().parent.parent / "conf"
QUICK = [*TINY, "train.max_steps=5", "evaluate.latency=false"]
CPU = torch.device("cpu")

Corruption = Callable[[Path], None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    """(the trained and calibrated checkpoint folder, the CLI arguments that trained it)."""
    root = tmp_path_factory.mktemp("corrupt")
    write_synthetic_task(root / "data", n_train=300, n_dev=80, seed=0)
    args = [*QUICK, f"task.data_dir={root / 'data'}", f"outputs={root / 'out'}"]
    ok(elastic("train", *args, cwd=root))
    ok(elastic("calibrate", *args, cwd=root))
    folder = root / "out" / "checkpoints" / "sst2" / "early_exit" / "tiny-bert" / "seed42"
    assert (folder / checkpoint.CALIBRATION).is_file()
    return folder, args


def _copy(folder: Path, tmp_path: Path, corrupt: Corruption | None = None) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("cache"))
    if corrupt is not None:
        corrupt(copy)
    return copy


def _raises(call: Callable[[], object], *needles: str) -> str:
    """The UserError's message: one line holding every needle."""
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------- ways to damage a file


def truncate(name: str) -> Corruption:
    def corrupt(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return corrupt


def scramble(name: str) -> Corruption:
    def corrupt(folder: Path) -> None:
        size = (folder / name).stat().st_size
        (folder / name).write_bytes(os.urandom(max(size, 64)))

    return corrupt


def write(name: str, text: str) -> Corruption:
    def corrupt(folder: Path) -> None:
        (folder / name).write_text(text)

    return corrupt


def remove(name: str) -> Corruption:
    return lambda folder: (folder / name).unlink()


def edit(name: str, key: str, value: object = None, *, drop: bool = False) -> Corruption:
    def corrupt(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        if drop:
            del data[key]
        else:
            data[key] = value
        (folder / name).write_text(json.dumps(data))

    return corrupt


# ---------------------------------------------------------------- model.safetensors

WEIGHTS_FIX = "re-run `elastic train` or restore it"


@pytest.mark.parametrize(
    "corrupt",
    [truncate("model.safetensors"), scramble("model.safetensors"), write("model.safetensors", "")],
    ids=["truncated", "random-bytes", "empty"],
)
def test_damaged_weights(trained, tmp_path: Path, corrupt: Corruption):
    folder = _copy(trained[0], tmp_path, corrupt)
    _raises(lambda: checkpoint.load(folder, CPU), f"{folder / 'model.safetensors'} is corrupt", WEIGHTS_FIX)


# ---------------------------------------------------------------- meta.json

META_CASES = {
    "truncated": truncate("meta.json"),
    "random-bytes": scramble("meta.json"),
    "not-an-object": write("meta.json", "[1, 2]"),
    "missing-field": edit("meta.json", "exit_layers", drop=True),
    "unknown-field": edit("meta.json", "colour", "red"),
    "wrong-type": edit("meta.json", "exit_layers", "1,2,3,4"),
    "bool-for-int": edit("meta.json", "num_labels", True),
    "unknown-family": edit("meta.json", "family", "gpt"),
    "unknown-head": edit("meta.json", "head", {"kind": "nope"}),
    "falling-exits": edit("meta.json", "exit_layers", [3, 2, 4]),
}


@pytest.mark.parametrize("corrupt", META_CASES.values(), ids=META_CASES.keys())
def test_damaged_meta(trained, tmp_path: Path, corrupt: Corruption):
    folder = _copy(trained[0], tmp_path, corrupt)
    needles = (str(folder / "meta.json"), "re-run `elastic train` or restore it")
    _raises(lambda: subjects.describe(folder), *needles)  # before evaluate opens its run
    _raises(lambda: checkpoint.load(folder, CPU), *needles)


@pytest.mark.parametrize(
    "corrupt,culprit",
    [
        (edit("meta.json", "exit_layers", [2, 3, 4]), "meta.json"),  # a head too many in the weights
        (edit("meta.json", "num_labels", 3), "meta.json"),  # classifiers of another size
        (edit("meta.json", "exit_layers", [1, 2, 3]), "backbone/config.json"),  # last exit != depth
    ],
    ids=["fewer-exits", "more-labels", "exits-end-early"],
)
def test_meta_edited_so_the_weights_no_longer_fit(trained, tmp_path: Path, corrupt: Corruption, culprit: str):
    folder = _copy(trained[0], tmp_path, corrupt)
    _raises(lambda: checkpoint.load(folder, CPU), str(folder), culprit, "re-run `elastic train`")


def test_old_format_says_which_format(trained, tmp_path: Path):
    folder = _copy(trained[0], tmp_path, edit("meta.json", "format", 1))
    _raises(lambda: subjects.describe(folder), str(folder), "format 1", "re-run `elastic train`")


# ---------------------------------------------------------------- backbone/: config and tokenizer

BACKBONE_FIX = "restore the checkpoint's backbone/ files or re-run `elastic train`"
CONFIG = "backbone/config.json"

BACKBONE_CASES = {
    # (corruption, the file the message names)
    "hidden-size": (edit(CONFIG, "hidden_size", 64), CONFIG),
    "more-layers": (edit(CONFIG, "num_hidden_layers", 6), CONFIG),
    "fewer-layers": (edit(CONFIG, "num_hidden_layers", 2), CONFIG),
    "vocab-size": (edit(CONFIG, "vocab_size", 10), CONFIG),
    "intermediate-size": (edit(CONFIG, "intermediate_size", 17), CONFIG),
    "heads-not-dividing": (edit(CONFIG, "num_attention_heads", 3), CONFIG),
    "size-as-text": (edit(CONFIG, "hidden_size", "big"), CONFIG),
    "unknown-model-type": (edit(CONFIG, "model_type", "nope"), CONFIG),
    "other-family": (edit(CONFIG, "model_type", "distilbert"), CONFIG),
    "config-truncated": (truncate(CONFIG), CONFIG),
    "config-not-an-object": (write(CONFIG, "[1]"), CONFIG),
    "config-empty-object": (write(CONFIG, "{}"), CONFIG),
    "config-missing": (remove(CONFIG), "backbone has no config.json"),
    "tokenizer-missing": (remove("backbone/tokenizer.json"), "backbone has no tokenizer vocabulary"),
    "tokenizer-truncated": (truncate("backbone/tokenizer.json"), "backbone/tokenizer.json"),
    "tokenizer-random-bytes": (scramble("backbone/tokenizer.json"), "backbone/tokenizer.json"),
    "tokenizer-empty-object": (write("backbone/tokenizer.json", "{}"), "tokenizer in"),
    "tokenizer-config-truncated": (truncate("backbone/tokenizer_config.json"), "tokenizer_config.json"),
    "tokenizer-config-missing": (remove("backbone/tokenizer_config.json"), "tokenizer_config.json"),
}


@pytest.mark.parametrize("corrupt,names", BACKBONE_CASES.values(), ids=BACKBONE_CASES.keys())
def test_damaged_or_edited_backbone(trained, tmp_path: Path, corrupt: Corruption, names: str):
    folder = _copy(trained[0], tmp_path, corrupt)
    subjects.describe(folder)  # meta.json is intact: this fails only when the model is loaded
    message = _raises(lambda: checkpoint.load(folder, CPU), str(folder), names)
    assert "re-run `elastic train`" in message and ("restore" in message), message


def test_weights_that_do_not_fit_say_which_tensor(trained, tmp_path: Path):
    folder = _copy(trained[0], tmp_path, edit(CONFIG, "hidden_size", 64))
    _raises(
        lambda: checkpoint.load(folder, CPU),
        f"the weights in {folder / 'model.safetensors'} do not fit the model that {folder / CONFIG} describes",
        "size mismatch for backbone.model.embeddings.word_embeddings.weight: [500, 32] in the weights, "
        "[500, 64] in the model",
    )


# ---------------------------------------------------------------- calibration.json

CALIBRATION_CASES = {
    "truncated": truncate("calibration.json"),
    "random-bytes": scramble("calibration.json"),
    "not-an-object": write("calibration.json", '"maxprob"'),
    **{
        f"no-{key}": edit("calibration.json", key, drop=True)
        for key in ("rule", "threshold", "temperatures", "exits")
    },
    "threshold-as-text": edit("calibration.json", "threshold", "high"),
    "temperatures-as-text": edit("calibration.json", "temperatures", ["1.0", "1.0", "1.0", "1.0"]),
    "temperatures-of-other-exits": edit("calibration.json", "temperatures", [1.0, 1.0]),
    "zero-temperature": edit("calibration.json", "temperatures", [1.0, 0.0, 1.0, 1.0]),
    "rule-settings-as-list": edit("calibration.json", "rule_settings", [1]),
}


def test_the_calibration_that_calibrate_wrote_reads_back(trained):
    calib = checkpoint.read_calibration(trained[0])
    assert calib is not None and calib["exits"] == ["L1", "L2", "L3", "L4"]


@pytest.mark.parametrize("corrupt", CALIBRATION_CASES.values(), ids=CALIBRATION_CASES.keys())
def test_damaged_calibration(trained, tmp_path: Path, corrupt: Corruption):
    folder = _copy(trained[0], tmp_path, corrupt)
    _raises(
        lambda: checkpoint.read_calibration(folder),
        str(folder / "calibration.json"),
        "re-run `elastic calibrate`",
    )


# ---------------------------------------------------------------- cascade.json


@pytest.fixture
def cascade(trained, tmp_path: Path) -> Path:
    """A cascade folder of one model (the trained checkpoint), as `elastic train` lays it out."""
    member = _copy(trained[0], tmp_path)
    folder = tmp_path / "cascade"
    folder.mkdir()
    entry = {"name": "only", "folder": str(member), "weights": checkpoint.weights_fingerprint(member)}
    meta = {
        "method": "early_exit",
        "task": "sst2",
        "seed": 42,
        "num_labels": 2,
        "label_names": ["negative", "positive"],
        "members": [entry],
        "format": checkpoint.FORMAT,
    }
    (folder / checkpoint.CASCADE).write_text(json.dumps(meta))
    assert subjects.describe(folder).num_exits == 1
    return folder


CASCADE_CASES = {
    "truncated": truncate("cascade.json"),
    "not-an-object": write("cascade.json", "[]"),
    "missing-field": edit("cascade.json", "members", drop=True),
    "unknown-field": edit("cascade.json", "colour", "red"),
    "no-members": edit("cascade.json", "members", []),
    "member-without-weights": edit("cascade.json", "members", [{"name": "only", "folder": "x"}]),
    "member-as-text": edit("cascade.json", "members", ["only"]),
}


@pytest.mark.parametrize("corrupt", CASCADE_CASES.values(), ids=CASCADE_CASES.keys())
def test_damaged_cascade(cascade: Path, corrupt: Corruption):
    corrupt(cascade)
    _raises(lambda: subjects.describe(cascade), str(cascade / "cascade.json"), "re-run `elastic train`")


# ---------------------------------------------------------------- train.init_from


@pytest.fixture
def deebert(trained, tmp_path: Path):
    """(a method=static-like copy of the trained checkpoint, DeeBERT's config and stages starting from it)."""
    source = _copy(trained[0], tmp_path)
    edit("meta.json", "exit_layers", [4])(source)  # one exit: a fine-tuned model
    edit("meta.json", "method", "static")(source)
    data = next(a for a in trained[1] if a.startswith("task.data_dir="))
    register_configs()
    overrides = [a for a in QUICK if not a.startswith("method=")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        raw = compose("train", overrides=[*overrides, "method=deebert", data, f"train.init_from={source}"])
    cfg = to_root(raw)
    stages = build_method(cfg.method).stages()
    assert init_from.check_source(cfg, stages).stages_done == 1  # intact, it is accepted
    return source, cfg, stages


@pytest.mark.parametrize(
    "corrupt,names",
    [
        (truncate("meta.json"), "meta.json is not valid JSON"),
        (edit("meta.json", "seed", "42"), "meta.json is corrupt"),
        (truncate("config.yaml"), "config.yaml"),
        (write("config.yaml", "- a\n- b\n"), "config.yaml is corrupt"),
        (write("config.yaml", "seed: 42\n"), "config.yaml is corrupt (it holds no task settings)"),
        (remove("config.yaml"), "config.yaml is missing"),
    ],
    ids=[
        "meta-truncated",
        "meta-wrong-type",
        "config-truncated",
        "config-a-list",
        "config-no-task",
        "config-missing",
    ],
)
def test_damaged_init_from_source(deebert, corrupt: Corruption, names: str):
    source, cfg, stages = deebert
    corrupt(source)
    _raises(lambda: init_from.check_source(cfg, stages), str(source), names, "re-run `elastic train`")


@pytest.mark.parametrize(
    "corrupt",
    [truncate("model.safetensors"), scramble("model.safetensors")],
    ids=["truncated", "random-bytes"],
)
def test_damaged_init_from_weights(trained, deebert, corrupt: Corruption):
    source, cfg, stages = deebert
    start = init_from.check_source(cfg, stages)
    model = checkpoint.load(trained[0], CPU)[0]  # same head kind and pooling as the source
    corrupt(source)
    _raises(
        lambda: init_from.load_into(model, start),
        f"train.init_from: {source / 'model.safetensors'} is corrupt or truncated",
        "re-run `elastic train` method=static",
    )


# ---------------------------------------------------------------- backbone.path: a local model folder

LOCAL_CASES = {
    "weights-truncated": (truncate("model.safetensors"), "a file of the model in"),
    "weights-random-bytes": (scramble("model.safetensors"), "a file of the model in"),
    "config-truncated": (truncate("config.json"), "config.json is not valid JSON"),
    "config-not-an-object": (write("config.json", "[1]"), "config.json is corrupt"),
    "tokenizer-truncated": (truncate("tokenizer.json"), "a file of the model in"),
}


@pytest.mark.parametrize("corrupt,needle", LOCAL_CASES.values(), ids=LOCAL_CASES.keys())
def test_damaged_local_backbone_folder(tmp_path: Path, corrupt: Corruption, needle: str):
    from test_backbone_loading import save_hf_folder

    from elastic_cli.config import BackboneConfig
    from elastic_cli.models.loading import build_backbone

    save_hf_folder("bert", tmp_path / "model")
    corrupt(tmp_path / "model")
    cfg = BackboneConfig(name="local", family="bert", path=str(tmp_path / "model"))
    _raises(lambda: build_backbone(cfg), str(tmp_path / "model"), needle, "point backbone.path at an intact")


# ---------------------------------------------------------------- end to end: one line, exit 2


def _runs(outputs: Path):
    import mlflow

    if not (outputs / "mlflow.db").exists():
        return None
    mlflow.set_tracking_uri(f"sqlite:///{outputs / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["sst2"], output_format="pandas")


def _evaluate(trained, tmp_path: Path, corrupt: Corruption, *needles: str) -> Path:
    folder, args = trained
    copy = _copy(folder, tmp_path, corrupt)
    outputs = tmp_path / "out"
    args = [a for a in args if not a.startswith("outputs=")]
    proc = elastic(
        "evaluate", *args, f"outputs={outputs}", f"ckpt={copy}", "method.exit.threshold=0.9", cwd=tmp_path
    )
    _one_line_error(proc, str(copy), *needles)
    return outputs


@pytest.mark.slow
def test_truncated_weights_end_to_end_fail_the_run(trained, tmp_path: Path):
    outputs = _evaluate(
        trained,
        tmp_path,
        truncate("model.safetensors"),
        "model.safetensors is corrupt or truncated",
        WEIGHTS_FIX,
    )
    runs = _runs(outputs)  # the weights are read inside the evaluate run: it is marked FAILED
    assert runs is not None and runs["status"].tolist() == ["FAILED"]
    assert runs["tags.elastic.stage"].tolist() == ["evaluate"]


@pytest.mark.slow
def test_corrupt_meta_end_to_end_fails_before_any_run(trained, tmp_path: Path):
    outputs = _evaluate(trained, tmp_path, truncate("meta.json"), "meta.json is not valid JSON", WEIGHTS_FIX)
    runs = _runs(outputs)  # meta.json is read before the run is opened
    assert runs is None or runs.empty


@pytest.mark.slow
@pytest.mark.extended  # in-process: test_damaged_or_edited_backbone; end to end, two others run in CI
def test_edited_backbone_config_end_to_end(trained, tmp_path: Path):
    _evaluate(
        trained,
        tmp_path,
        edit(CONFIG, "hidden_size", 64),
        "backbone/config.json describes (size mismatch for backbone.model.embeddings",
        "re-run `elastic train`",
    )
