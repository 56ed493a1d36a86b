"""``report.html``: one self-contained page that shows a run.

Built from the files the run wrote (so it reflects exactly what is on disk): headline metrics,
learning curves, confusion matrix and most-confused pairs, per-class table (worst F1 first),
top-loss gallery, calibration (when present), data health, model info and the export's
contract and verification. Images are embedded; no JavaScript, no network; the layout reflows
on a phone.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from classifier.file_io import atomic_write_text, read_csv, read_json, read_regular
from classifier.slices import section as slices_section

#: ``(id, title)`` of every section, in page order.
SECTIONS = (
    ("summary", "Summary"),
    ("curves", "Learning curves"),
    ("confusion", "Confusion matrix"),
    ("per-class", "Per class"),
    ("slices", "Slices"),
    ("gallery", "Validation images with the highest loss"),
    ("calibration", "Calibration"),
    ("accept", "Accept or reject"),
    ("labels", "Label issues"),
    ("data", "Data health"),
    ("model", "Model"),
    ("export", "Export"),
)
METRICS = ("top1", "top5", "balanced_acc", "f1_macro", "auroc", "ece", "nll", "loss")

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f4f6f9}
main{max-width:1100px;margin:0 auto;padding:12px}
section{background:#fff;border-radius:8px;padding:12px 16px;margin:12px 0;
box-shadow:0 1px 3px #0002}
h1{font-size:1.4em;margin:8px 0}h2{font-size:1.15em;margin:4px 0 10px}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#eef2f8;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:1.3em}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:8px}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.92em}
td,th{border-bottom:1px solid #dde;padding:3px 8px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}.muted{color:#667}.bad{color:#b3261e}
"""


def _image(path: Path, alt: str) -> str:
    """The PNG at ``path`` embedded; nothing when it is missing, not a regular file (a link
    planted in the run folder is never followed) or not a PNG."""
    data = read_regular(path)
    if data is None or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ""
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() and "." not in str(value) else f"{number:.4g}"


def _number(text: str | None) -> float:
    """``text`` as a number for sorting; missing or NaN sorts first."""
    try:
        value = float(text or "nan")
    except ValueError:
        return float("-inf")
    return float("-inf") if value != value else value


def _cards(values: dict[str, float]) -> str:
    cards = "".join(
        f'<div class="card">{html.escape(k)}<b>{v:.4g}</b></div>' for k, v in values.items()
    )
    return f'<div class="cards">{cards}</div>'


def stage_metrics(metrics_csv: Path, stage: str) -> dict[str, float]:
    """The last logged ``{stage}/*`` summary metrics of a ``metrics.csv``."""
    found: dict[str, float] = {}
    for row in read_csv(metrics_csv):
        for name in METRICS:
            value = row.get(f"{stage}/{name}")
            if value:
                found[name] = float(value)
    return found


def _summary(run: Path, results: Path) -> str:
    history = read_csv(run / "history.csv")
    parts = []
    if history:
        best = max(history, key=lambda r: _number(r.get("val_top1")))
        val = {k: float(best[f"val_{k}"]) for k in ("top1", "balanced_acc", "f1_macro", "loss")}
        parts.append(f"<h3>Validation, best epoch {int(best['epoch']) + 1}</h3>{_cards(val)}")
    test = stage_metrics(results / "metrics.csv", "test")
    if test:
        where = "" if results == run else f" ({html.escape(results.name)}/)"
        parts.append(f"<h3>Test{where}</h3>{_cards(test)}")
    info = read_json(run / "model_info.json") or {}
    epochs = len(history)
    facts = f"{html.escape(str(info.get('model_name', '')))}, {epochs} epoch(s)"
    return "".join(parts) + f'<p class="muted">{facts}; run folder {html.escape(str(run))}</p>'


def _confusion(run: Path, results: Path) -> str:
    images = _image(run / "confusion_matrix_val.png", "validation confusion matrix") + _image(
        results / "confusion_matrix_test.png", "test confusion matrix"
    )
    parts = [f'<div class="pair">{images}</div>']
    pairs = read_csv(run / "most_confused_val.csv")[:10]
    if pairs:
        rows = [(p["true"], p["predicted"], p["count"], p["share_of_true"]) for p in pairs]
        header = ("true", "predicted as", "images", "share of true class")
        parts.append("<h3>Most confused (validation)</h3>" + _table(header, rows))
    return "".join(parts)


def _per_class(run: Path, results: Path) -> str:
    parts = []
    for stage, folder in (("val", run), ("test", results)):
        rows = read_csv(folder / f"{stage}_per_class.csv")
        if rows:
            rows.sort(key=lambda r: _number(r.get("f1")))
            wanted = ("class", "support", "predicted", "precision", "recall", "f1", "auroc")
            header = tuple(h for h in wanted if h in rows[0])
            table = _table(header, ([r[h] for h in header] for r in rows))
            parts.append(f"<h3>{stage} (worst F1 first)</h3>{table}")
    return "".join(parts)


def _calibration(run: Path, results: Path) -> str:
    report = dict(read_json(run / "calibration.json") or {})
    tested = read_json(results / "calibration.json") or {}
    if "test" in tested:  # a later `classifier test` of this run
        report["test"] = tested["test"]
        report.setdefault("temperature", tested.get("temperature", 1.0))
    if "temperature" not in report:
        return ""
    rows = [
        (f"{split}, {when}", report[split][when]["ece"], report[split][when]["nll"])
        for split in ("val", "test")
        if split in report
        for when in ("before", "after")
    ]
    images = _image(run / "calibration_val.png", "validation reliability diagram") + _image(
        results / "calibration_test.png", "test reliability diagram"
    )
    note = f"<p>temperature {report['temperature']:.4g}: probabilities = softmax(logits / T)</p>"
    return note + _table(("", "ECE", "NLL"), rows) + f'<div class="pair">{images}</div>'


def _accept(run: Path, results: Path) -> str:
    rule = dict((read_json(run / "calibration.json") or {}).get("selective") or {})
    tested = (read_json(results / "calibration.json") or {}).get("selective") or {}
    if "test" in tested:  # a later `classifier test` of this run
        rule["test"] = tested["test"]
    if "reject_threshold" not in rule:
        return ""
    note = (
        f"<p>A prediction is accepted when its calibrated confidence is at least "
        f"{rule['reject_threshold']:.4g} (the lowest at which accepted validation predictions "
        f"reach {rule['target_accuracy']:.4g}) and its feature distance to the nearest "
        f"training class at most {rule['distance_threshold']:.4g} (what 99% of validation "
        "images stay within; images of no known class lie further).</p>"
    )
    header = ("", "images", "accepted", "accuracy of accepted", "accuracy of all")
    rows = [
        (stage, r["images"], r["coverage"], r["accuracy_accepted"], r["accuracy_all"])
        for stage in ("val", "test")
        if isinstance(r := rule.get(stage), dict)
    ]
    images = _image(run / "risk_coverage_val.png", "validation risk-coverage") + _image(
        results / "risk_coverage_test.png", "test risk-coverage"
    )
    return note + _table(header, rows) + f'<div class="pair">{images}</div>'


def _labels(run: Path, results: Path) -> str:
    """The label-issues section; nothing when its files are missing or malformed (a run
    folder may come from someone else: every value shown is escaped)."""
    try:
        return _label_section(run, results)
    except (KeyError, TypeError, AttributeError, ValueError):
        return ""


def _label_section(run: Path, results: Path, shown: int = 10) -> str:
    summary = dict(read_json(run / "label_issues.json") or {})
    rows = read_csv(run / "label_issues.csv")
    if results != run and (tested := read_json(results / "label_issues.json") or {}):
        summary.update({k: v for k, v in tested.items() if k in ("train", "val", "test")})
        tested_splits = set(tested)
        rows = [r for r in rows if r.get("split") not in tested_splits]
        rows += read_csv(results / "label_issues.csv")
    splits = [s for s in ("train", "val", "test") if isinstance(summary.get(s), dict)]
    if not splits:
        return ""
    counts = [
        (s, summary[s]["images"], summary[s]["suspects"], summary[s].get("estimated_wrong", ""))
        for s in splits
    ]
    note = (
        "<p>Images whose given label the model disagrees with, most suspect first (train: "
        "mean margin of the given class over training, negative; val/test: calibrated "
        "probability of the given label, with confident learning's estimate of how many "
        "labels are wrong). Every row is in label_issues.csv.</p>"
    )
    batches = summary.get("train", {}).get("batches", {})
    if batches.get("mixed"):
        mixed, used = int(batches["mixed"]), int(batches.get("used", 0))
        note += (
            f"<p>{mixed} of {mixed + used} training batches were mixed by MixUp/CutMix and not "
            "scored.</p>"
        )
    header = ("split", "images", "suspects", "estimated wrong")
    top = [r for s in splits for r in [r for r in rows if r.get("split") == s][:shown]]
    listing = _table(
        ("split", "path", "given", "suggested", "score"),
        [
            tuple(r.get(k, "") for k in ("split", "path", "given", "suggested", "score"))
            for r in top
        ],
    )
    images = _image(run / "label_issues.png", "suspect labels")
    if results != run:
        images += _image(results / "label_issues.png", "suspect test labels")
    return note + _table(header, counts) + images + listing


def _data(run: Path) -> str:
    parts = []
    health = read_json(run / "data_health.json")
    if health:
        rows = [(k, v["groups"], v["images"]) for k, v in health["summary"].items()]
        parts.append(_table(("duplicates", "groups", "images"), rows))
        shown = [
            (
                ", ".join(g["kinds"]),
                "exact" if g["exact"] else "near",
                i["split"],
                i["class"],
                i["path"],
            )
            for g in health["groups"][:10]
            for i in g["images"]
        ]
        if shown:
            parts.append(_table(("kind", "copy", "split", "class", "path"), shown))
    stats = read_json(run / "dataset_stats.json") or {}
    per_class = {split: s.get("per_class", {}) for split, s in stats.items() if isinstance(s, dict)}
    if per_class:
        classes = sorted({c for counts in per_class.values() for c in counts})
        header = ("class", *per_class)
        parts.append(
            _table(header, ([c, *(per_class[s].get(c, 0) for s in per_class)] for c in classes))
        )
    parts.append(_image(run / "class_distribution_train.png", "training class distribution"))
    return "".join(parts)


def _model(run: Path) -> str:
    info = read_json(run / "model_info.json")
    if not info:
        return ""
    rows = [
        (k, info[k])
        for k in ("model_name", "num_classes", "parameters", "weights_mb", "gmacs")
        if k in info
    ]
    rows += [
        (f"latency, batch {b}", f"{v['ms']} ms ({v['images_per_s']} img/s)")
        for b, v in info.get("latency", {}).items()
    ]
    return _table(("", ""), rows)


def _export(run: Path) -> str:
    parts = []
    for report_file in sorted(run.glob("*export_report.json")):
        report = read_json(report_file) or {}
        verdict = (
            "passed"
            if report.get("passed")
            else ("not verified" if not report.get("verified") else "FAILED")
        )
        keys = (
            "images",
            "top1_agreement",
            "max_abs_logit_diff",
            "top1_pytorch",
            "top1_onnxruntime",
            "accepted_agreement",
            "max_rel_distance_diff",
        )
        rows = [(k, report[k]) for k in keys if k in report]
        parts.append(
            f"<h3>{html.escape(str(report.get('file', '')))}: {verdict}</h3>"
            + _table(("", ""), rows)
        )
    for mapping_file in sorted(run.glob("*labels_mapping.json"))[:1]:
        contract = read_json(mapping_file) or {}
        fields = (
            "image_size",
            "resize_size",
            "interpolation",
            "mean",
            "std",
            "input_dtype",
            "input_range",
            "output",
            "reject_threshold",
            "distance_threshold",
        )
        parts.append(
            "<h3>Preprocessing contract</h3>"
            + _table(("", ""), ((k, contract[k]) for k in fields if k in contract))
        )
    return "".join(parts)


def write_report(run: Path, results: Path | None = None) -> Path:
    """Write ``run/report.html`` from the run's files; test results come from ``results``
    (a ``classifier test`` folder such as ``run/test/``), else from the run itself."""
    results = results or run
    builders = {
        "summary": lambda: _summary(run, results),
        "curves": lambda: (
            _image(run / "loss_history.png", "loss")
            + _image(run / "metrics_history.png", "metrics")
        ),
        "confusion": lambda: _confusion(run, results),
        "per-class": lambda: _per_class(run, results),
        "slices": lambda: slices_section(run, results),
        "gallery": lambda: _image(run / "val_predictions.png", "highest-loss validation images"),
        "calibration": lambda: _calibration(run, results),
        "accept": lambda: _accept(run, results),
        "labels": lambda: _labels(run, results),
        "data": lambda: _data(run),
        "model": lambda: _model(run),
        "export": lambda: _export(run),
    }
    sections = []
    for key, title in SECTIONS:
        body = builders[key]()
        if body:
            sections.append(f'<section id="{key}"><h2>{title}</h2>{body}</section>')
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(run.name)}: classifier report</title><style>{_STYLE}</style>"
        f"</head><body><main><h1>Run {html.escape(str(run))}</h1>{''.join(sections)}"
        "</main></body></html>"
    )
    path = run / "report.html"
    atomic_write_text(path, page)
    return path
