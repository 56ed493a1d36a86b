"""The accept/reject rule of a run (:mod:`classifier.selective`): fitted on the best weights'
features of training and validation images when training ends, and recorded with its
coverage and risk-coverage curve per split in ``calibration.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from classifier.contract import classifier_module, image_data
from classifier.files import read_json, write_json
from classifier.selective import Selector, collect, fit_selector, selector_report
from classifier.verify import spread

#: Fewest validation images a rule is chosen on.
MIN_IMAGES = 20


def fit_rule(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    state: dict[str, torch.Tensor],
    temperature: float,
    feature_images: int,
    target: float | None,
) -> tuple[Selector, dict[str, Any]] | None:
    """The rule for the weights ``state``: class statistics of the features of up to
    ``feature_images`` training images (spread over the list, so over the classes),
    thresholds chosen on the validation set, and how it does there (:func:`selector_report`).
    ``None`` when there are too few images to choose one."""
    model = classifier_module(pl_module)
    assert model.preprocessing is not None
    data = image_data(trainer)
    train = data.files("train")
    if train is None or not len(train[0]):
        return None
    net = model.network_copy(state).eval()
    chosen = spread(train[0], feature_images)
    pre, device = model.preprocessing, model.device
    features, _, labels = collect(net, data.eval_loader("train", chosen), pre, device)
    val = collect(net, data.eval_loader("val"), pre, device)
    if len(val[2]) < MIN_IMAGES or len(labels) <= model.num_classes:
        return None
    selector = fit_selector((features, labels), val, temperature, model.num_classes, target)
    distance = selector.distance()(val[0].float())
    return selector, selector_report(selector, distance, val[1], val[2], temperature)


def record_rule(path: Path, stage: str, found: dict[str, Any], selector: Selector) -> None:
    """Add the rule's thresholds and ``stage``'s report to the ``selective`` part of the JSON
    file ``path`` (``calibration.json``)."""
    loaded = read_json(path)
    report = loaded if isinstance(loaded, dict) else {}
    part = report.get("selective")
    report["selective"] = {**(part if isinstance(part, dict) else {}), **selector.summary()}
    report["selective"][stage] = found
    write_json(path, report)
