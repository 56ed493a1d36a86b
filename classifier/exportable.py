"""The module an ONNX export traces: the network with its outputs (:data:`OUTPUTS`) and,
optionally, its normalisation inside the graph. Verification runs the same module in PyTorch,
so every output the file has is compared with what PyTorch computes."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from classifier.selective import Selector, features_and_logits
from classifier.transforms import Preprocessing

#: The outputs of an export, in order (the last two with an accept/reject rule).
OUTPUTS = ("logits", "probabilities", "distance", "accepted")


class Exportable(nn.Module):
    """The network, optionally with normalisation (``uint8`` RGB input) inside the graph, with
    the outputs ``logits`` (first, as consumers of plain exports expect) and calibrated
    ``probabilities`` (``softmax(logits / T)``); with a selector also ``distance`` (to the
    nearest training class, in feature space) and ``accepted`` (the prediction passes both
    thresholds)."""

    def __init__(
        self,
        net: nn.Module,
        pre: Preprocessing,
        uint8_input: bool,
        temperature: float,
        selector: Selector | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.uint8_input = uint8_input
        mean, std = pre.mean_std(scale=255.0)
        self.mean, self.std = nn.Buffer(mean), nn.Buffer(std)
        self.temperature = nn.Buffer(torch.tensor(float(temperature)))
        self.distance = selector.distance() if selector is not None else None
        limits = (0.0, 0.0)
        if selector is not None:
            limits = (selector.confidence_threshold, selector.distance_threshold)
        self.thresholds = nn.Buffer(torch.tensor(limits))

    @override
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.uint8_input:
            images = (images.float() - self.mean) / self.std
        if self.distance is None:
            logits: torch.Tensor = self.net(images)
            return logits, (logits / self.temperature).softmax(dim=1)
        features, logits = features_and_logits(self.net, images)
        probabilities = (logits / self.temperature).softmax(dim=1)
        distance = self.distance(features)
        confident = probabilities.max(1).values >= self.thresholds[0]
        return logits, probabilities, distance, confident & (distance <= self.thresholds[1])
