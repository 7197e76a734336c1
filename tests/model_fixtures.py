"""The small served model every server, batcher, check and container test uses."""
from __future__ import annotations

from pathlib import Path

import torch

from defense.artifact import save_artifact
from training.models import create_model

SHAPE = (28, 28, 1)


def make_artifact(out_dir: Path) -> Path:
    """The small CNN, untrained, biases zeroed so that random images get varied labels.

    (An untrained net with biases answers one class for everything; without them some
    logit margins are near 1e-6, which makes batching-determinism tests sharp.)
    """
    torch.manual_seed(0)
    net = create_model("small_cnn", 10, 1, [0.3], [0.4]).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.bias.zero_()
    return save_artifact(net, out_dir, input_shape=SHAPE, class_names=[f"c{i}" for i in range(10)],
                         arch="small_cnn", dataset="fashion_mnist", training={"loss": "trades"}, metrics={})
