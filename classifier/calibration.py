"""``Calibration``: probabilities that mean what they say, and a decision to accept or reject
each prediction.

Label smoothing, MixUp and EMA leave a model under-confident (a correct prediction at 0.4);
overfitting leaves it over-confident. One temperature ``T`` fitted on the best checkpoint's
validation logits (:mod:`classifier.selective`) fixes most of either without changing a
prediction. The callback fits it when training ends, with the accept/reject rule
(:mod:`classifier.selective`), stores both in ``best.ckpt`` (so ``test``, ``predict`` and
exports use them), and reports them in ``calibration.json`` with a reliability diagram and a
risk-coverage curve per split.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from classifier import report_items
from classifier.callback_contract import classifier_module, image_data
from classifier.checked_values import MAX_TEMPERATURE, MIN_TEMPERATURE, rule_value_problem
from classifier.errors import ConfigError
from classifier.figures import PLOT_TIME_SHARE, PlottingCallback, log_image
from classifier.figures import draw as render
from classifier.file_io import inside, read_json, run_dir, write_json
from classifier.metrics import BINS
from classifier.selective import (
    MIN_IMAGES,
    Selector,
    diagram_data,
    fit_rule,
    fit_temperature,
    record_rule,
    scores,
    selector_report,
)


class Calibration(PlottingCallback):
    """Fit a temperature on the best checkpoint's validation logits when training ends.

    The temperature is stored in ``best.ckpt`` (``checkpoint["temperature"]``), so
    ``classifier test`` reports calibrated ``test/ece`` and ``test/nll``, ``predict`` writes
    calibrated confidences, and ONNX exports gain a ``probabilities`` output. Writes
    ``calibration.json`` (temperature; ECE and NLL before and after, on val, and on test after a
    test) and ``calibration_val.png`` / ``calibration_test.png`` (reliability diagrams). It
    runs when training ends, before any callback's ``on_fit_end``, so every export (``best``,
    and ``final`` with the temperature fitted on the best weights) carries it, wherever the
    callbacks are listed. Fewer than 20 validation images, or none misclassified, leave the
    temperature at 1 with a warning.

    It also chooses which predictions to accept (:mod:`classifier.selective`): the lowest
    calibrated confidence at which the accepted validation predictions reach ``target_accuracy``,
    and a largest distance, in the network's feature space, to the classes of the training
    images (what 99 % of validation images stay within), so images of no known class are
    rejected; stored in ``best.ckpt`` and the exports, used by ``predict`` (the ``accepted``
    column), reported with the risk-coverage curve in ``calibration.json`` and
    ``risk_coverage_val.png`` / ``risk_coverage_test.png``.

    Args:
        selective: choose the accept/reject rule too (a pass over ``feature_images`` training
            images and the validation set with the best weights when training ends).
        target_accuracy: the validation accuracy the accepted predictions must reach; ``None``
            halves the validation error (at most 0.99).
        feature_images: training images whose features give the class statistics (spread over
            the classes; all when there are fewer).
        plot_time_share: see :class:`~classifier.figures.PlottingCallback`.
    """

    def __init__(
        self,
        selective: bool = True,
        target_accuracy: float | None = None,
        feature_images: int = 5000,
        plot_time_share: float = PLOT_TIME_SHARE,
    ) -> None:
        super().__init__(plot_time_share)
        if target_accuracy is not None:
            found = rule_value_problem("target_accuracy", target_accuracy)
            if found:
                raise ConfigError(f"Calibration: {found.removeprefix('its ')}")
        self.selective = selective
        self.target_accuracy = target_accuracy
        self.feature_images = feature_images
        self._test: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._test_distance: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: The temperature fitted at the end of the last fit (``None`` before).
        self.temperature: float | None = None
        # Validation logits of this epoch, of the last epoch (until its checkpoint is decided)
        # and of the epoch best.ckpt holds: no extra pass over val at the end of training.
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending: tuple[tuple[torch.Tensor, torch.Tensor], float | None] | None = None
        self._best: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _best_score(trainer: pl.Trainer) -> float | None:
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        return None if score is None else float(score)

    def _promote(self, trainer: pl.Trainer) -> None:
        """Keep the last epoch's logits if its checkpoint became best.ckpt (ModelCheckpoint
        decides after this callback's epoch-end hook)."""
        if self._pending is not None:
            logits, score = self._pending
            if self._best_score(trainer) != score:
                self._best = logits
            self._pending = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget an earlier fit's logits."""
        super().on_fit_start(trainer, pl_module)
        self._val, self._pending, self._best = [], None, None

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Decide about the previous epoch's logits; start collecting this epoch's."""
        self._promote(trainer)
        self._val = []

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's logits on the device (read back once, at the epoch's end)."""
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val.append((outputs["logits"].float(), batch[1]))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the epoch's logits on rank 0 until ModelCheckpoint decides about them."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        collected, self._val = self._val, []
        self._pending = (_gathered(collected), self._best_score(trainer))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit the temperature on rank 0, write it into ``best.ckpt`` and give it to the model
        on every rank (rank 0 always reaches the broadcast). A failed fit is a warning (the
        temperature stays 1), never a lost run; a failed checkpoint write stays the run's
        error. The model's temperature is a number beside its weights, so the EMA's copy of
        its weights at the end of training leaves it alone."""
        from classifier.checkpoint import amend_checkpoint, read_checkpoint

        self._promote(trainer)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        temperature, selector, failed = 1.0, None, None
        if best and not inside(Path(best), run_dir(trainer)):  # never amend another run's file
            warnings.warn(f"{best} is not in this run's folder; not calibrated", stacklevel=2)
            best = ""
        if trainer.is_global_zero and best and not trainer.interrupted:
            try:
                checkpoint = read_checkpoint(trainer, best)
                temperature = self._calibrate(trainer, pl_module, Path(best), checkpoint)
                selector = self._select(trainer, pl_module, checkpoint, temperature)
            except Exception as error:  # a finished training must not fail here
                temperature, selector = 1.0, None
                warnings.warn(f"calibration failed ({error!r}); temperature 1", stacklevel=2)
            else:
                extra = {"selective": selector.to_checkpoint()} if selector is not None else {}
                try:
                    change = lambda c: {**c, "temperature": temperature, **extra}  # noqa: E731
                    amend_checkpoint(trainer, best, change, checkpoint)
                except Exception as error:  # raised once every rank has the temperature
                    failed = error
        stored = selector.to_checkpoint() if selector is not None else None
        temperature, stored = trainer.strategy.broadcast((temperature, stored), src=0)
        self.temperature = float(temperature)
        model = classifier_module(pl_module)
        model.temperature = self.temperature
        model.selector = Selector.from_checkpoint(stored) if stored is not None else None
        if failed is not None:
            raise failed

    def _select(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        checkpoint: dict[str, Any],
        temperature: float,
    ) -> Selector | None:
        """The accept/reject rule for ``checkpoint``'s weights (:func:`fit_rule`), reported;
        ``None`` (with a warning) when it cannot be fitted."""
        if not self.selective:
            return None
        fitted = fit_rule(
            trainer,
            pl_module,
            checkpoint["state_dict"],
            temperature,
            self.feature_images,
            self.target_accuracy,
        )
        if fitted is None:
            warnings.warn("too few images to choose an accept/reject rule; none", stacklevel=2)
            return None
        selector, found = fitted
        self._report_rule("val", found, selector, trainer)
        return selector

    def _report_rule(
        self, stage: str, found: dict[str, Any], selector: Selector, trainer: pl.Trainer
    ) -> None:
        """Add ``stage``'s part to ``calibration.json``; draw ``risk_coverage_<stage>.png``."""
        folder, step = run_dir(trainer), trainer.global_step
        record_rule(folder / "calibration.json", stage, found, selector)
        rule = selector.summary()
        report_items.note(
            folder,
            "accept",
            "accept/rule",
            "A prediction is accepted when its calibrated confidence is at least "
            f"{rule['reject_threshold']:.4g} (the lowest at which accepted validation "
            f"predictions reach {rule['target_accuracy']:.4g}) and its feature distance to the "
            f"nearest training class at most {rule['distance_threshold']:.4g} (what 99% of "
            "validation images stay within; images of no known class lie further).",
        )
        header = ("", "images", "accepted", "accuracy of accepted", "accuracy of all")
        keys = ("images", "coverage", "accuracy_accepted", "accuracy_all")
        rows = [[stage, *(found[k] for k in keys)]]
        report_items.table(folder, "accept", f"accept/{stage}", header, rows)

        def draw() -> None:
            path = folder / f"risk_coverage_{stage}.png"
            render("risk_coverage", path, found, selector.target_accuracy, stage)
            alt = f"{'validation' if stage == 'val' else stage} risk-coverage"
            log_image(trainer, f"{stage}/risk_coverage", path, step, "accept", alt)

        self.draws.request(trainer, f"risk_coverage_{stage}", draw)

    def _calibrate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        best: Path,
        checkpoint: dict[str, Any],
    ) -> float:
        """The temperature for the weights of ``checkpoint`` (``best``); writes
        calibration.json."""
        if self._best is not None:  # logged by the validation that made best.ckpt
            logits, labels = self._best
        else:  # best.ckpt from elsewhere (a resumed run's first epochs): one pass over val
            logits, labels = _val_logits(trainer, pl_module, checkpoint["state_dict"])
        errors = int((logits.argmax(1) != labels).sum()) if len(labels) else 0
        note = None
        if len(labels) < MIN_IMAGES or errors == 0:
            note = (
                f"not calibrated: {len(labels)} validation image(s) with {errors} error(s); a "
                f"temperature needs {MIN_IMAGES}+ images and some errors to be meaningful"
            )
            warnings.warn(note, stacklevel=2)
        temperature = 1.0 if note else fit_temperature(logits, labels)
        if not math.isfinite(temperature):
            raise ValueError("the fitted temperature is not finite (NaN or infinite logits?)")
        if not MIN_TEMPERATURE * 1.01 < temperature < 0.99 * MAX_TEMPERATURE:
            warnings.warn(
                f"the temperature {temperature:.3g} reached its bound: the validation logits "
                "barely constrain it; a larger or harder val/ gives a meaningful temperature",
                stacklevel=2,
            )
        folder = run_dir(trainer)
        report: dict[str, Any] = {
            "temperature": round(temperature, 6),
            "bins": BINS,
            "fitted_on": f"validation logits of {best.name} ({len(labels)} images)",
            "val": {
                "before": scores(logits, labels, 1.0),
                "after": scores(logits, labels, temperature),
            },
        }
        if note:
            report["note"] = note
        write_json(folder / "calibration.json", report)
        _hand_report(folder, report, "val")
        self._draw(trainer, logits, labels, temperature, "val")
        return temperature

    def _draw(
        self, trainer: pl.Trainer, logits: torch.Tensor, labels: torch.Tensor, t: float, stage: str
    ) -> None:
        folder, step = run_dir(trainer), trainer.global_step

        def draw() -> None:
            curves, counts = diagram_data(logits, labels, t)
            path = folder / f"calibration_{stage}.png"
            render("reliability_diagram", path, curves, counts, f"{stage}: reliability")
            alt = f"{'validation' if stage == 'val' else stage} reliability diagram"
            log_image(trainer, f"{stage}/calibration", path, step, "calibration", alt)

        self.draws.request(trainer, f"calibration_{stage}", draw)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the test logits."""
        self._test, self._test_distance = [], []

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the raw (unscaled) logits on the device (read back once, at the epoch's end),
        and each image's feature distance when the model has an accept/reject rule."""
        self._test.append((outputs["logits"].float(), batch[1]))
        if "distance" in outputs:
            self._test_distance.append((outputs["distance"].float()[:, None], batch[1]))

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add test ECE and NLL before and after scaling to ``calibration.json``."""
        collected, self._test = self._test, []
        logits, labels = _gathered(collected)  # every rank takes part
        distances, self._test_distance = self._test_distance, []
        distance = _gathered(distances)[0][:, 0] if distances else None
        if not trainer.is_global_zero or not len(labels):
            return
        model = classifier_module(pl_module)
        temperature = model.temperature
        path = run_dir(trainer) / "calibration.json"
        found = read_json(path)
        report = found if isinstance(found, dict) else {"temperature": round(temperature, 6)}
        report.setdefault("bins", BINS)
        report["test"] = {
            "before": scores(logits, labels, 1.0),
            "after": scores(logits, labels, temperature),
        }
        write_json(path, report)
        _hand_report(path.parent, report, "test")
        if model.selector is not None and distance is not None:
            found = selector_report(model.selector, distance, logits, labels, temperature)
            self._report_rule("test", found, model.selector, trainer)
        self._draw(trainer, logits, labels, temperature, "test")


def _hand_report(folder: Path, report: dict[str, Any], stage: str) -> None:
    """Hand ``report.html`` the temperature and ``stage``'s ECE and NLL before and after."""
    temperature = float(report.get("temperature", 1.0))
    text = f"temperature {temperature:.4g}: probabilities = softmax(logits / T)"
    report_items.note(folder, "calibration", "calibration/temperature", text)
    rows = [
        [f"{stage}, {when}", report[stage][when]["ece"], report[stage][when]["nll"]]
        for when in ("before", "after")
    ]
    report_items.table(folder, "calibration", f"calibration/{stage}", ("", "ECE", "NLL"), rows)


def _gathered(
    collected: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's collected (logits, labels) batches, on the CPU, without unreadable
    files (label < 0). Every process must call it."""
    from classifier.dist import gather_batches

    found = gather_batches(collected)
    if found is None:
        return torch.empty(0, 0), torch.empty(0).long()
    logits, labels = found
    keep = labels >= 0
    return logits[keep], labels[keep]


@torch.no_grad()
def _val_logits(
    trainer: pl.Trainer, pl_module: pl.LightningModule, state: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of every validation image (readable ones) under a copy of the network with
    the weights in ``state``."""
    from classifier.transforms import normalize

    model = classifier_module(pl_module)
    assert model.preprocessing is not None
    net = model.network_copy(state).eval()
    mean, std = model.preprocessing.mean_std(model.device)
    outputs, targets = [], []
    for images, labels, _ in image_data(trainer).eval_loader("val"):
        keep = labels >= 0
        floats = normalize(images.to(model.device), mean, std)
        outputs.append(net(floats)[keep.to(model.device)].float().cpu())
        targets.append(labels[keep])
    if not outputs:
        return torch.empty(0, model.num_classes), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(targets)
