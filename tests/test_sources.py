"""Three sources of the same splits: class folders (with ``valid/``), ``annotations.jsonl``
files (the layout of ortizeg/classifier-training) and CSV manifests."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO, draw, make_folder, run_cli, tiny

CLASSES = ("7", "23", "9")


def write_jsonl(
    root: Path, counts: dict[str, int] | None = None, seed: int = 0, extra: int = 0
) -> Path:
    """``root/{train,valid,test}/annotations.jsonl`` with images in ``crops/`` (and, for
    train, ``extra`` more rows in ``train/synthetic/annotations.jsonl``); the metadata's
    ``border`` is true for every other image."""
    rng = np.random.default_rng(seed)
    for split, n in (counts or {"train": 8, "valid": 4, "test": 4}).items():
        folders = [(root / split, n)]
        if extra and split == "train":
            folders.append((root / split / "synthetic", extra))
        for folder, count in folders:
            (folder / "crops").mkdir(parents=True, exist_ok=True)
            rows = []
            for k, label in enumerate(CLASSES):
                for i in range(count):
                    name = f"crops/{label}_{i}.png"
                    draw(k, rng).save(folder / name)
                    meta = {"jersey_color": "white", "border": i % 2 == 0}
                    rows.append(
                        {
                            "image": name,
                            "prefix": "Read the number.",
                            "suffix": label,
                            "metadata": meta,
                        }
                    )
            write_rows(folder / "annotations.jsonl", rows)
    return root


def write_rows(path: Path, rows: list[Any], raw: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(r) for r in rows] + list(raw)
    path.write_text("\n".join(lines) + "\n")


def module(data: Path, **kwargs: Any) -> Any:
    from classifier.datamodule import ImageFolderDataModule

    return ImageFolderDataModule(str(data), image_size=32, batch_size=4, num_workers=0, **kwargs)


def setup(data: Path, **kwargs: Any) -> Any:
    dm = module(data, **kwargs)
    dm.setup("fit")
    return dm


def test_jsonl_layout_is_detected_and_read_at_any_depth(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data", extra=2)
    dm = setup(data)
    assert dm.source.kind == "jsonl"
    assert dm.class_names == sorted(CLASSES)  # sorted labels of train, as the users' system
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train) == 3 * (8 + 2) and len(val) == 3 * 4
    assert val.root == data / "valid"
    first = train.paths[0]
    assert first.is_file() and first.is_relative_to(data / "train")
    # Labels follow the rows, origins name the row, the metadata is kept.
    for i in range(len(train)):
        label = dm.class_names[int(train.labels[i])]
        assert Path(train.paths[i]).name.startswith(f"{label}_")
    assert any("synthetic/annotations.jsonl:" in train.origins[i] for i in range(len(train)))
    origin = train.origins[0]
    path, line = origin.rsplit(":", 1)
    row = json.loads(Path(path).read_text().splitlines()[int(line) - 1])
    assert Path(path).parent / row["image"] == Path(train.paths[0])
    assert json.loads(train.attributes[0]) == row["metadata"]
    images, labels, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (3, 32, 32) and labels.max() < 3


def test_repeated_rows_are_kept(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data")
    train = data / "train" / "annotations.jsonl"
    first = train.read_text().splitlines()[0]
    train.write_text(train.read_text() + first + "\n")
    dm = setup(data)
    assert len(dm.splits["train"]) == 3 * 8 + 1
    paths = [str(p) for p in dm.splits["train"].paths]
    assert len(set(paths)) == 3 * 8


def test_bad_rows_are_named_by_file_and_line_and_excluded(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data")
    outside = tmp_path / "secret.png"
    draw(0, np.random.default_rng(0)).save(outside)
    os.symlink(outside, data / "valid" / "crops" / "link.png")
    valid = data / "valid" / "annotations.jsonl"
    good = valid.read_text()
    bad = [
        "{not json",
        json.dumps({"image": "crops/7_0.png"}),  # no label
        json.dumps({"image": "crops/gone.png", "suffix": "7"}),
        json.dumps({"image": "../../secret.png", "suffix": "7"}),
        json.dumps({"image": "crops/link.png", "suffix": "7"}),  # a link out of the root
        json.dumps({"image": "crops/7_1.png", "suffix": "99"}),  # a class train lacks
        json.dumps([1, 2]),
    ]
    valid.write_text(good + "\n".join(bad) + "\n")
    first = len(good.splitlines()) + 1
    with pytest.warns(UserWarning, match="excluded 7"):
        dm = setup(data)
    excluded = dm.excluded["val"]
    reasons = {int(k.rsplit(":", 1)[1]): v for k, v in excluded.items()}
    assert all(k.startswith(f"{valid}:") for k in excluded)
    assert reasons[first].startswith("bad JSON")
    assert reasons[first + 1] == "missing key 'suffix'"
    assert reasons[first + 2].startswith("missing file crops/gone.png")
    assert "leaves the data root" in reasons[first + 3]
    assert "leaves the data root" in reasons[first + 4]
    assert reasons[first + 5] == "label '99' is not a class of train"
    assert reasons[first + 6] == "not a JSON object"
    assert len(dm.splits["val"]) == 3 * 4
    from classifier.splits import DataError

    with pytest.raises(
        DataError, match=rf"(?s)7 unusable image\(s\) or row\(s\).*{valid}:{first}: bad JSON"
    ):
        setup(data, strict=True)


def test_annotations_reached_through_a_link_out_of_the_root_are_not_read(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data")
    outside = write_jsonl(tmp_path / "elsewhere", counts={"x": 1}) / "x"
    os.symlink(outside, data / "train" / "more")
    os.symlink(outside / "crops", data / "crops_elsewhere")
    train = data / "train" / "annotations.jsonl"
    through = json.dumps({"image": "../crops_elsewhere/7_0.png", "suffix": "7"})
    train.write_text(train.read_text() + "[" * 100_000 + "\n" + through + "\n")
    with pytest.warns(UserWarning, match="excluded 3"):
        dm = setup(data)
    excluded = dm.excluded["train"]
    assert "leaves the data root" in excluded[f"{data / 'train' / 'more' / 'annotations.jsonl'}:0"]
    assert excluded[f"{train}:25"] == "bad JSON (nested too deeply)"
    assert "leaves the data root" in excluded[f"{train}:26"]  # through a linked folder
    assert len(dm.splits["train"]) == 24


def test_an_unreadable_image_of_a_row_names_the_row(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data")
    (data / "train" / "crops" / "9_3.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"excluded 1"):
        dm = setup(data)
    (reason,) = dm.excluded["train"].values()
    assert f"(row {data / 'train' / 'annotations.jsonl'}:" in reason


def test_valid_or_val_but_not_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from classifier.splits import DataError

    data = make_folder(tmp_path / "data", counts={"train": 4, "valid": 2})
    dm = setup(data)
    assert dm.source.kind == "folders" and len(dm.splits["val"]) == 3 * 2
    assert dm.source.describe() == f"Data: folders from {data} (train, valid)"
    make_folder(data, counts={"val": 2})
    with pytest.raises(DataError, match=r"val and .*valid both exist"):
        setup(data)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_one_csv_manifest_with_a_split_column(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "images", counts={"all": 6})
    rows = []
    for k, label in enumerate(("cat", "dog", "fox")):
        for i in range(6):
            split = "train" if i < 4 else "valid"
            rows.append([f"all/{label}/{label}_{i:03d}.png", label, split, "day" if k else "night"])
    rows.append(["all/cat/cat_000.png", "cat", "holdout", "day"])
    write_csv(data / "manifest.csv", ["path", "label", "split", "time"], rows)
    with pytest.warns(UserWarning, match="excluded 1"):
        dm = setup(data)
    assert dm.source.kind == "csv" and dm.class_names == ["cat", "dog", "fox"]
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 6
    assert json.loads(dm.splits["val"].attributes[0]) == {"time": "night"}
    assert dm.splits["val"].origins[0] == f"{data / 'manifest.csv'}:6"
    (reason,) = dm.excluded["train"].values()
    assert "'holdout' is not train" in reason


def test_a_manifest_without_a_split_column_is_train_and_val_fraction_holds_out(
    tmp_path: Path,
) -> None:
    data = make_folder(tmp_path / "d", counts={"train": 5})
    rows = [[p.relative_to(data).as_posix(), p.parent.name] for p in sorted(data.rglob("*.png"))]
    write_csv(data / "labels.csv", ["path", "label"], rows)
    dm = setup(data / "labels.csv", val_fraction=0.2)
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 3
    from classifier.splits import DataError

    with pytest.raises(DataError, match=r"val_fraction 0.1"):
        setup(data / "labels.csv")


def test_one_csv_manifest_per_split(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", counts={"train": 4, "val": 2})
    for split, name in (("train", "train"), ("val", "valid")):
        rows = [
            [p.relative_to(data).as_posix(), p.parent.name]
            for p in sorted((data / split).rglob("*.png"))
        ]
        write_csv(data / f"{name}.csv", ["path", "class"], rows)
    dm = setup(data, source="csv", label_key="class")
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 6
    assert dm.splits["val"].root == data
    bad = data / "test.csv"
    write_csv(bad, ["file", "label"], [["train/cat/cat_000.png", "cat"]])
    from classifier.splits import DataError

    dm = module(data, source="csv", label_key="class")
    with pytest.raises(DataError, match=r"test.csv has no 'path' column"):
        dm.setup("test")


def test_val_fraction_holds_out_rows_and_a_resume_gets_the_same(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data", counts={"train": 10})
    train = data / "train" / "annotations.jsonl"
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines + lines[:10]) + "\n")  # ten images in two rows each
    dm = setup(data, val_fraction=0.2, seed=1)
    held = sorted(str(p) for p in dm.splits["val"].paths)
    assert 6 <= len(held) <= 8 and dm.splits["val"].origins is not None
    # A repeated image lies on one side only (its rows are exact copies, kept together).
    assert not set(held) & {str(p) for p in dm.splits["train"].paths}
    state = dm.state_dict()
    again = module(data, val_fraction=0.2, seed=5)
    again.setup("fit")
    again.load_state_dict(state)
    assert sorted(str(p) for p in again.splits["val"].paths) == held


@pytest.mark.slow
def test_the_users_layout_trains_with_the_quickstart_config(tmp_path: Path) -> None:
    """``classifier fit --config configs/quickstart.yaml --data.data_dir <their folder>``,
    nothing else; the model beats chance on the test rows."""
    data = write_jsonl(tmp_path / "data", counts={"train": 24, "valid": 8, "test": 8}, extra=4)
    rows = data / "train" / "synthetic" / "annotations.jsonl"
    rows.write_text(rows.read_text() + '{"image": "crops/gone.png", "suffix": "7"}\n')
    os.chdir(tmp_path)
    run_cli(
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data.data_dir", str(data)
    )
    (run,) = (tmp_path / "runs" / "quickstart").iterdir()
    with (run / "metrics.csv").open(newline="") as handle:
        top1 = [float(r["test/top1"]) for r in csv.DictReader(handle) if r.get("test/top1")]
    assert top1 and top1[-1] > 0.6  # chance: 1/3
    assert (run / "model.onnx").is_file()
    with (run / "excluded_files.csv").open(newline="") as handle:
        (excluded,) = csv.DictReader(handle)
    assert excluded["path"] == f"{rows}:13" and "missing file crops/gone.png" in excluded["reason"]


@pytest.mark.slow
def test_a_csv_manifest_given_as_data_dir_trains_and_tests(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", counts={"train": 6, "val": 3, "test": 3})
    rows = [
        [p.relative_to(data).as_posix(), p.parent.name, p.parent.parent.name, "x"]
        for p in sorted(data.rglob("*.png"))
    ]
    write_csv(data / "all.csv", ["path", "label", "split", "camera"], rows)
    cli: Any = run_cli(
        *tiny("fit", data / "all.csv", "--trainer.default_root_dir", str(tmp_path)),
        "--test_after_fit",
        "true",
    )
    run = Path(cli.trainer.log_dir)
    assert (run / "test_per_class.csv").is_file()  # test rows of the manifest, after fit
    assert cli.datamodule.source.describe().endswith(
        "(all.csv: train, all.csv: val, all.csv: test)"
    )


def test_predict_reads_rows_with_or_without_labels(tmp_path: Path) -> None:
    from classifier.sources import read_predict

    data = make_folder(tmp_path / "d", counts={"new": 1})
    rows = [["new/cat/cat_000.png", "cat", "a"], ["new/dog/dog_000.png", "", "b"]]
    write_csv(data / "todo.csv", ["path", "label", "site"], rows)
    split = read_predict(data / "todo.csv", ["cat", "dog"], None)
    assert split.labels.tolist() == [0, -1] and split.attributes is not None
    assert json.loads(split.attributes[1]) == {"site": "b"}
    folder = write_jsonl(tmp_path / "j", counts={"test": 1}) / "test"
    annotations = folder / "annotations.jsonl"
    annotations.write_text(annotations.read_text() + '{"image": "crops/7_0.png"}\n')
    split = read_predict(folder, ["23", "7"], None)
    assert split.labels.tolist() == [1, 0, -1, -1]  # 9 is no class of the model's


def test_a_prediction_row_is_in_the_annotations_schema() -> None:
    from classifier.image_dataset import UNREADABLE
    from classifier.prediction_writer import json_row

    paths, truth, names = [Path("a.png"), Path("b.png")], np.array([1, -1]), ["x", "y"]
    rowed = (["f.jsonl:1", "f.jsonl:2"], ['{"border": true}', "{}"])
    row = json_row((0, 1, [0.2, 0.8], True), paths, truth, names, rowed)
    assert row["suffix"] == "y" and row["metadata"] == {"border": True}
    assert row["probabilities"] == {"x": 0.2, "y": 0.8} and row["accepted"] is True
    assert row["true"] == "y" and row["row"] == "f.jsonl:1"
    assert Path(row["image"]).is_absolute() and row["image"].endswith("a.png")
    bad = json_row((1, UNREADABLE, [0.5, 0.5], None), paths, truth, names, None)
    assert bad["suffix"] is None and bad["error"] == "unreadable" and bad["true"] is None


@pytest.mark.slow
def test_label_issues_and_predictions_point_back_to_the_rows(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data", counts={"train": 20, "valid": 12})
    valid = data / "valid" / "annotations.jsonl"
    rows = [json.loads(line) for line in valid.read_text().splitlines()]
    for row in rows[:12:3]:  # four wrong labels among the 7s
        row["suffix"] = "9"
    write_rows(valid, rows)
    cli: Any = run_cli(
        *tiny("fit", data, "--trainer.max_epochs", "5"),
        "--trainer.callbacks+=classifier.LabelIssues",
    )
    run = Path(cli.trainer.log_dir)
    with (run / "label_issues.csv").open(newline="") as handle:
        issues = list(csv.DictReader(handle))
    assert issues
    for issue in issues:  # the row named holds the image and the given label
        path, line = issue["row"].rsplit(":", 1)
        given = json.loads(Path(path).read_text().splitlines()[int(line) - 1])
        assert Path(path).parent / given["image"] == Path(issue["path"])
        assert given["suffix"] == issue["given"]
    suggested = [json.loads(x) for x in (run / "label_issues.jsonl").read_text().splitlines()]
    assert [s["suffix"] for s in suggested] == [i["suggested"] for i in issues]
    assert all(s["metadata"]["jersey_color"] == "white" for s in suggested)
    best = cli.trainer.checkpoint_callback.best_model_path
    out = tmp_path / "predicted"
    run_cli(
        "predict",
        "--ckpt_path",
        best,
        "--data.predict_dir",
        str(data / "valid"),
        "--trainer.callbacks+=classifier.PredictionWriter",
        "--trainer.callbacks.filename",
        "predictions.jsonl",
        "--trainer.default_root_dir",
        str(out),
    )
    (written,) = out.rglob("predictions.jsonl")
    predicted = [json.loads(x) for x in written.read_text().splitlines()]
    assert len(predicted) == len(rows)
    assert [p["metadata"] for p in predicted] == [r["metadata"] for r in rows]
    right = sum(p["suffix"] == Path(p["image"]).name.split("_")[0] for p in predicted)
    assert right > 0.6 * len(rows)  # the images' true classes, not the flipped labels


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_validates_annotation_rows_as_one_process_does(tmp_path: Path) -> None:
    """Two processes (each with its own RAM cache) count each row once, as one process does."""
    from tests.conftest import FULL
    from tests.test_ddp import DDP, _classifier

    data = write_jsonl(tmp_path / "data", counts={"train": 6, "valid": 7})  # 21 rows: odd
    os.chdir(tmp_path)
    fit: Any = run_cli("fit", *FULL, "--data.data_dir", str(data), "--trainer.max_epochs", "1")
    best = str(Path(fit.trainer.checkpoint_callback.best_model_path).resolve())
    validate = ["validate", "--ckpt_path", best, *FULL, "--data.data_dir", str(data)]
    alone: Any = run_cli(*validate)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    _classifier([*validate, *DDP, "--data.cache_images", "ram"], ddp)  # a cache per process
    (together,) = (ddp / "runs").glob("*/version_*")
    for name in ("confusion_matrix_val.csv", "val_per_class.csv"):
        assert (Path(alone.trainer.log_dir) / name).read_text() == (together / name).read_text()
    matrix = (together / "confusion_matrix_val.csv").read_text().splitlines()[1:]
    assert sum(int(v) for row in matrix for v in row.split(",")[1:]) == 21
