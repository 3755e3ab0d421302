"""Checkpoint folders' files, written and read back: meta.json (CheckpointMeta) and a cascade's
cascade.json (CascadeMeta, its CascadeMember list): round trips, files written before a field existed,
another format, damaged files, and the cascade folder's consistency check; an early-exit model's
checkpoint (round trip, a failed save leaves the old one whole, another format) and a truncated backbone's
round trip."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_multi_exit import _batch, _model, _texts
from tiny_models import SAMPLE_TEXTS, random_texts, tiny_backbone

from elastic_cli import checkpoint, files
from elastic_cli.errors import UserError
from elastic_cli.models.multi_exit import MultiExitModel


def _meta(model: MultiExitModel, family: str, method: str = "static") -> checkpoint.CheckpointMeta:
    return checkpoint.CheckpointMeta(
        method=method,
        backbone=f"tiny-{family}",
        family=family,
        task="sst2",
        seed=0,
        exit_layers=model.exit_layers,
        num_labels=3,
        label_names=["a", "b", "c"],
        pooling="cls",
        max_seq_length=32,
        format=checkpoint.FORMAT,
    )


def _save_member(folder: Path, layers: int, seed: int) -> MultiExitModel:
    backbone, tok = tiny_backbone("bert", layers, SAMPLE_TEXTS)
    torch.manual_seed(seed)
    model = MultiExitModel(backbone, [layers], num_labels=3, use_pretrained_pooler=False).eval()
    checkpoint.save(folder, model, tok, OmegaConf.create({}), _meta(model, "bert"))
    return model


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- meta.json


def test_checkpoint_meta_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    backbone, tok = tiny_backbone("bert", 2, SAMPLE_TEXTS)
    torch.manual_seed(0)
    model = MultiExitModel(backbone, [1, 2], num_labels=3, use_pretrained_pooler=False).eval()
    meta = _meta(model, "bert")
    checkpoint.save(folder, model, tok, OmegaConf.create({}), meta)
    assert meta.weights == files.sha256(folder / checkpoint.WEIGHTS)
    assert json.loads((folder / checkpoint.META).read_text()) == asdict(meta)
    assert checkpoint.read_meta(folder) == meta
    loaded, _, loaded_meta = checkpoint.load(folder, torch.device("cpu"))
    assert loaded_meta == meta and loaded.exit_layers == [1, 2]
    assert checkpoint.weights_fingerprint(folder) == meta.weights


def test_checkpoint_meta_of_another_format_or_damaged_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _save_member(folder, 2, seed=0)
    path = folder / checkpoint.META
    good = path.read_text()
    # a meta.json without `format` was written before the field existed: format 1, another weights layout
    _edit_json(path, format=None)
    with pytest.raises(UserError, match=r"has format 1, this elastic reads format 2: re-run `elastic train`"):
        checkpoint.read_meta(folder)
    path.write_text(good)
    _edit_json(path, format=checkpoint.FORMAT + 1)
    with pytest.raises(UserError, match=f"has format {checkpoint.FORMAT + 1}"):
        checkpoint.read_meta(folder)
    path.write_text(good[: len(good) // 2])
    with pytest.raises(UserError) as caught:
        checkpoint.read_meta(folder)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "re-run `elastic train`" in message
    path.write_text(good)
    _edit_json(path, num_labels="three")
    with pytest.raises(UserError, match=r"is corrupt \(num_labels is \"three\", not int\)"):
        checkpoint.read_meta(folder)


# ---------------------------------------------------------------- cascade.json


def _write_cascade(folder: Path, members: dict[str, Path]) -> None:
    meta = checkpoint.CascadeMeta(
        method="elang",
        task="sst2",
        seed=0,
        num_labels=3,
        label_names=["a", "b", "c"],
        members=[
            {
                "name": name,
                "folder": str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path),
                "weights": checkpoint.weights_fingerprint(path),
            }
            for name, path in members.items()
        ],
    )
    (folder / checkpoint.CASCADE).write_text(json.dumps(asdict(meta)))


def test_read_cascade_meta_checks_each_members_weights(tmp_path: Path) -> None:
    folder = tmp_path / "cascade"
    swift, super_ = folder / "members" / "swift", tmp_path / "elsewhere" / "super"  # super: reused, absolute
    _save_member(swift, 2, seed=0)
    model = _save_member(super_, 3, seed=1)
    _write_cascade(folder, {"swift": swift, "super": super_})
    assert checkpoint.is_cascade(folder)
    meta = checkpoint.CascadeMeta.load(folder)
    assert [m.name for m in meta.members] == ["swift", "super"]
    assert meta.members[0].folder == "members/swift"
    assert [m.path(folder) for m in meta.members] == [swift, super_]

    # the super model is retrained after the cascade was assembled: same shapes, so the same file size
    size = (super_ / checkpoint.WEIGHTS).stat().st_size
    with torch.no_grad():
        model.heads.classifiers[0].bias.add_(1.0)
    checkpoint.save(
        super_,
        model,
        checkpoint.load(super_, torch.device("cpu"))[1],
        OmegaConf.create({}),
        _meta(model, "bert"),
    )
    assert (super_ / checkpoint.WEIGHTS).stat().st_size == size
    with pytest.raises(UserError, match=r"super model .* re-run `elastic train`"):
        checkpoint.CascadeMeta.load(folder)


def test_read_cascade_meta_refuses_a_missing_member_and_another_format(tmp_path: Path) -> None:
    folder = tmp_path / "cascade"
    swift = folder / "members" / "swift"
    _save_member(swift, 2, seed=0)
    _write_cascade(folder, {"swift": swift})
    raw = json.loads((folder / checkpoint.CASCADE).read_text())
    (folder / checkpoint.CASCADE).write_text(json.dumps({**raw, "format": checkpoint.FORMAT + 1}))
    with pytest.raises(UserError, match="format"):
        checkpoint.CascadeMeta.load(folder)
    (folder / checkpoint.CASCADE).write_text(
        json.dumps(
            {
                **raw,
                "members": [*raw["members"], {"name": "gone", "folder": "members/gone", "weights": "0-0"}],
            }
        )
    )
    with pytest.raises(UserError, match="no checkpoint"):
        checkpoint.CascadeMeta.load(folder)


@pytest.fixture
def one_member_cascade(tmp_path: Path) -> Path:
    folder = tmp_path / "cascade"
    _save_member(folder / "members" / "swift", 2, seed=0)
    _write_cascade(folder, {"swift": folder / "members" / "swift"})
    return folder


def test_cascade_meta_takes_the_training_codes_dicts_and_round_trips(one_member_cascade: Path) -> None:
    folder = one_member_cascade
    weights = checkpoint.weights_fingerprint(folder / "members" / "swift")
    entry = {"name": "swift", "folder": "members/swift", "weights": weights}
    meta = checkpoint.CascadeMeta(
        method="elang", task="sst2", seed=0, num_labels=3, label_names=["a", "b", "c"], members=[entry]
    )
    assert meta.members == [checkpoint.CascadeMember("swift", "members/swift", weights)]
    assert meta.format == checkpoint.FORMAT
    # cascade.json keeps its layout: the members are the {"name", "folder", "weights"} objects
    meta.save(folder)
    written = json.loads((folder / checkpoint.CASCADE).read_text())
    assert written == {
        "method": "elang",
        "task": "sst2",
        "seed": 0,
        "num_labels": 3,
        "label_names": ["a", "b", "c"],
        "members": [entry],
        "format": checkpoint.FORMAT,
        "train_run_id": "",
    }
    assert checkpoint.CascadeMeta.load(folder) == meta
    assert checkpoint.CascadeMeta(**written) == meta  # CascadeMember or dicts: the same meta
    assert meta.members[0].path(folder) == folder / "members" / "swift"


def test_save_cascade_writes_cascade_json_and_swaps_the_folder_in(tmp_path: Path) -> None:
    work, folder = tmp_path / "work", tmp_path / "cascade"
    _save_member(work / "members" / "swift", 2, seed=0)
    entry = {
        "name": "swift",
        "folder": "members/swift",
        "weights": checkpoint.weights_fingerprint(work / "members" / "swift"),
    }
    meta = checkpoint.CascadeMeta(
        method="elang", task="sst2", seed=0, num_labels=3, label_names=["a", "b", "c"], members=[entry]
    )
    checkpoint.save_cascade(folder, work, OmegaConf.create({"seed": 0}), meta)
    assert not work.exists() and (folder / "config.yaml").is_file()
    assert checkpoint.CascadeMeta.load(folder) == meta


def test_cascade_json_written_before_format_existed_is_read(one_member_cascade: Path) -> None:
    path = one_member_cascade / checkpoint.CASCADE
    _edit_json(path, format=None)
    assert checkpoint.CascadeMeta.load(one_member_cascade).format == checkpoint.FORMAT


def test_cascade_member_keys_besides_the_three_are_ignored(one_member_cascade: Path) -> None:
    path = one_member_cascade / checkpoint.CASCADE
    data = json.loads(path.read_text())
    _edit_json(path, members=[{**data["members"][0], "note": "reused"}])
    assert checkpoint.CascadeMeta.load(one_member_cascade).members[0].name == "swift"


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"format": checkpoint.FORMAT + 1}, f"has format {checkpoint.FORMAT + 1}, this elastic reads format"),
        ({"members": []}, "is corrupt (no members)"),
        ({"members": ["swift"]}, 'is corrupt (members is ["swift"], not list[dict[str, str]])'),
        ({"members": [{"name": "swift", "folder": "x"}]}, "is corrupt (members[0] has no weights)"),
        ({"members": None}, "is corrupt (no field members)"),
        ({"colour": "red"}, "is corrupt (unknown field colour)"),
        ({"seed": "zero"}, 'is corrupt (seed is "zero", not int)'),
    ],
)
def test_damaged_or_newer_cascade_json_is_one_line(
    one_member_cascade: Path, changes: dict, problem: str
) -> None:
    _edit_json(one_member_cascade / checkpoint.CASCADE, **changes)
    with pytest.raises(UserError) as caught:
        checkpoint.CascadeMeta.load(one_member_cascade)
    message = str(caught.value)
    assert "\n" not in message and problem in message and "re-run `elastic train`" in message


def test_truncated_cascade_json_is_one_line(one_member_cascade: Path) -> None:
    path = one_member_cascade / checkpoint.CASCADE
    path.write_text(path.read_text()[:20])
    with pytest.raises(UserError) as caught:
        checkpoint.CascadeMeta.load(one_member_cascade)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


# ---------------------------------------------------------------- an early-exit model's checkpoint


def test_checkpoint_round_trip(tmp_path):
    model, tok = _model("bert")
    folder = tmp_path / "ckpt"
    checkpoint.save(
        folder, model, tok, OmegaConf.create({"seed": 0}), _meta(model, "bert", method="early_exit")
    )
    loaded, tok2, meta = checkpoint.load(folder, torch.device("cpu"))
    ids, mask, types = _batch(tok2, _texts(5, seed=4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask, types).logits, model(ids, mask, types).logits)
    assert meta.exit_layers == [1, 2, 3, 4]
    assert (folder / "config.yaml").is_file()


def test_failed_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    model, tok = _model("bert")
    folder = tmp_path / "ckpt"
    checkpoint.save(folder, model, tok, OmegaConf.create({"v": 1}), _meta(model, "bert", method="early_exit"))
    before = (folder / checkpoint.WEIGHTS).read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "save_backbone_files", boom)
    with torch.no_grad():
        model.heads.classifiers[0].bias.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(
            folder, model, tok, OmegaConf.create({"v": 2}), _meta(model, "bert", method="early_exit")
        )
    assert (folder / checkpoint.WEIGHTS).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind


def test_a_checkpoint_of_another_format_is_a_user_error(tmp_path):
    model, tok = _model("bert")
    folder = tmp_path / "ckpt"
    checkpoint.save(folder, model, tok, OmegaConf.create({}), _meta(model, "bert", method="early_exit"))
    meta = json.loads((folder / checkpoint.META).read_text())
    meta.pop("format")
    (folder / checkpoint.META).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="re-run `elastic train`"):
        checkpoint.load(folder, torch.device("cpu"))


# ---------------------------------------------------------------- a truncated backbone (SWEET's multi-model members)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_truncated_model_round_trips_through_a_checkpoint(tmp_path: Path, family: str) -> None:
    backbone, tok = tiny_backbone(family, 4, random_texts(100, seed=3))
    backbone.truncate(2)
    torch.manual_seed(0)
    model = MultiExitModel(backbone, [2], num_labels=3, use_pretrained_pooler=False).eval()
    checkpoint.save(tmp_path / "m", model, tok, OmegaConf.create({}), _meta(model, family))
    loaded, tok2, meta = checkpoint.load(tmp_path / "m", torch.device("cpu"))
    assert loaded.backbone.num_layers == 2
    assert len(loaded.backbone._layer_list()) == 2
    assert meta.exit_layers == [2]
    enc = tok2(random_texts(4, seed=12), padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.static_forward(*args), model.static_forward(*args))
