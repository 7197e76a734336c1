"""The small served model every server, batcher, check, container and score test uses, and a live server for it."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import torch

from avc_common.artifact import Artifact, save_artifact
from defense.server import DefenseServer, ServerConfig
from training.models import create_model

SHAPE = (28, 28, 1)


def make_artifact(out_dir: Path, training: dict | None = None, seed: int = 0,
                  shape: tuple[int, int, int] = SHAPE) -> Path:
    """The small CNN, untrained, biases zeroed so that random images get varied labels; ``training`` goes in the
    manifest (default: a TRADES model), ``seed`` draws the weights, ``shape`` is its input (H, W, C): 28x28 takes
    the small CNN, 64x64 the proxy's.

    (An untrained net with biases answers one class for everything; without them some
    logit margins are near 1e-6, which makes batching-determinism tests sharp.)
    """
    torch.manual_seed(seed)
    arch = "small_cnn" if shape[:2] == SHAPE[:2] else "small_cnn_64"
    net = create_model(arch, 10, shape[2], [0.3] * shape[2], [0.4] * shape[2]).eval()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.bias.zero_()
    return save_artifact(net, out_dir, input_shape=shape, class_names=[f"c{i}" for i in range(10)],
                         arch=arch, dataset="fashion_mnist", training=training or {"loss": "trades"}, metrics={})


class LiveServer:
    """A :class:`DefenseServer` on 127.0.0.1, any free port, running on its own event-loop thread."""

    def __init__(self, artifact: Artifact, warm: bool = True, **config) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = DefenseServer(artifact, ServerConfig(host="127.0.0.1", port=0, **config))
        self.target = f"127.0.0.1:{self.run(self.server.start())}"
        if warm:
            self.run(self.server.warm_up())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.server.stop(grace_s=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SlowForward(torch.nn.Module):
    """The artifact's model at a deliberately slow, known pace: ``per_image_s`` per image of every forward."""

    def __init__(self, model: torch.nn.Module, per_image_s: float) -> None:
        super().__init__()
        self.model, self.per_image_s = model, per_image_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.per_image_s * len(x))
        return self.model(x)
