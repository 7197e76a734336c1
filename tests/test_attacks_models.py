"""The two LabelOnlyModel implementations agree: an artifact in-process and the same artifact behind the gRPC server."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import LiveServer
from torch import nn

from attacks import ArtifactModel, BudgetedModel, GeoDA, RemoteModel
from avc_common.artifact import load_artifact, save_artifact
from avc_common.rpc.client import DefenseClient

SHAPE = (10, 10, 3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    return save_artifact(net, tmp_path_factory.mktemp("art") / "artifact", input_shape=SHAPE,
                         class_names=["a", "b", "c"], arch="tiny", dataset="test", training={}, metrics={})


@pytest.fixture(scope="module")
def server_target(artifact_dir):
    """The artifact served on loopback from an event-loop thread."""
    live = LiveServer(load_artifact(artifact_dir), max_images_per_request=64, max_batch_size=64, max_delay_ms=1)
    yield live.target
    live.close()


def test_remote_and_in_process_models_agree_and_count_queries(artifact_dir, server_target):
    local = ArtifactModel(artifact_dir)
    assert local.info.shape == SHAPE and local.info.num_classes == 3
    images = np.random.default_rng(0).integers(0, 256, size=(150, *SHAPE), dtype=np.uint8)
    with DefenseClient(server_target, timeout_s=10) as client:
        remote = RemoteModel(client)
        assert remote.info == local.info
        np.testing.assert_array_equal(remote(images), local(images))
        assert remote.queries == local.queries == 150
        labels = local(images[:4])
        model = BudgetedModel(remote, images[:4], labels, budget=60)
        GeoDA().run(model, np.arange(4), np.random.default_rng(0))
        assert remote.queries - 150 == model.used.sum() and model.used.max() <= 60
        found = np.isfinite(model.best_l2)
        assert found.any() and np.all(local(model.best[found]) != labels[found])


def test_models_refuse_images_of_the_wrong_shape_or_type(artifact_dir):
    local = ArtifactModel(artifact_dir)
    with pytest.raises(ValueError, match="uint8 N x 10 x 10 x 3"):
        local(np.zeros((1, 10, 10, 3), dtype=np.float32))
