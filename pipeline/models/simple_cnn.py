"""LeNet-style simple CNN from seed 002 (the CIFAR-10 lab report's first model).

conv5x5-6 -> max-pool 2 -> conv5x5-16 -> max-pool 2 -> fc 400-120-84-num_classes (ReLU).
At 32x32 input the feature map is exactly 16x5x5 = 400; an adaptive pool to 5x5 keeps the
same head for other input sizes (identity at 32).

``forward_features`` returns the 84 features the classifier reads as an (N, 84, 1, 1) map, so a
head (:mod:`pipeline.models.heads`) keeps the whole LeNet and only replaces its last layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.models.registry import register_model


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.AdaptiveAvgPool2d((5, 5)),
        )
        self.num_features = 84
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return x[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).flatten(1))


@register_model(family="simple", min_size=32, min_size_small=32, paper="LeCun et al. 1998 (LeNet-5); seed 002")
def simple_cnn(num_classes: int = 10, pretrained: bool = False, small_input: bool = False, **kw) -> nn.Module:
    # small_input changes nothing: the net is already built for 32x32
    return SimpleCNN(num_classes=num_classes, **kw)
