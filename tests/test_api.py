"""``attacks.score``: one call from Python, the same per-image results as the command, files and resume on request."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import SHAPE, LiveServer, make_artifact

import attacks
from attacks import ArtifactModel
from attacks.scoring import cli as score_cli
from attacks.scoring.api import BadInput
from avc_common.artifact import load_artifact
from avc_common.data.evalset import write_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHEAP = {"attacks": ["contrast", "hsja"], "budget": 40, "batch_images": 4, "progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture(scope="module")
def data(art):
    """Eight images the model classifies as labelled, except image 1 (labelled otherwise)."""
    images = np.random.default_rng(1).integers(0, 256, size=(8, *SHAPE), dtype=np.uint8)
    labels = ArtifactModel(art)(images)
    labels[1] = (labels[1] + 1) % 10
    return images, labels


def test_five_lines_from_a_module_and_float_tensors_give_the_commands_per_image_distances(art, data, tmp_path):
    images, labels = data
    net = load_artifact(art).model  # any torch module taking float N x C x H x W in [0, 1]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # float NCHW, as a notebook holds them
    results = attacks.score(net, x, torch.from_numpy(labels), **CHEAP)
    assert results.distances.shape == (8,) and results.distances[1] == 0  # image 1 is misclassified
    assert results.fooled.sum() == results.summary["fooled"] > 0

    folder = write_folder(tmp_path / "data", images, labels)
    assert score_cli.main(["--model", str(art), "--data", str(folder), "--attacks", "contrast,hsja", "--budget", "40",
                           "--batch-images", "4", "--no-progress", "--no-reference", "--device", "cpu",
                           "--output", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results.distances.tolist() == cli["distances"]
    # the adversarials are verified: the model's label differs from the true one wherever an image was fooled
    fooled = results.fooled
    assert (ArtifactModel(art)(results.adversarials[fooled]) != labels[fooled]).all()


def test_chain_gives_the_commands_chained_distances(art, data, tmp_path):
    images, labels = data
    chained = attacks.score(str(art), images, labels, chain=True, **CHEAP)
    folder = write_folder(tmp_path / "data", images, labels)
    assert score_cli.main(["--model", str(art), "--data", str(folder), "--attacks", "contrast,hsja", "--budget", "40",
                           "--batch-images", "4", "--no-progress", "--no-reference", "--device", "cpu", "--chain",
                           "--output", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert chained.distances.tolist() == cli["distances"] and cli["budget"]["chained"]
    assert chained.distances.tolist() != attacks.score(str(art), images, labels, **CHEAP).distances.tolist()


def test_an_output_folder_gets_the_commands_files_and_a_second_call_resumes_without_querying(art, data, tmp_path):
    images, labels = data
    out = tmp_path / "out"
    first = attacks.score(str(art), images, labels, output=out, **CHEAP)
    for name in ("results.json", "report.md", "cdf.png", "gallery.png", "adversarials.npz", "run.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] and saved["distances"] == first.distances.tolist()

    model = ArtifactModel(art)
    again = attacks.score(model, images, labels, output=out, **CHEAP)
    assert again.distances.tolist() == first.distances.tolist()
    assert model.queries == 0  # every unit and verification was saved: nothing is asked again
    with pytest.raises(BadInput, match="holds a run with other settings"):
        attacks.score(model, images, labels, output=out, **{**CHEAP, "budget": 41})

    first.save(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "results.json").read_text())["distances"] == saved["distances"]


def test_a_served_model_and_a_surrogate_module(art, data):
    """A ``host:port`` target scores like the artifact; a module is accepted as a surrogate of the transfer attack."""
    images, labels = data
    server = LiveServer(load_artifact(art))
    try:
        remote = attacks.score(server.target, images, labels, **CHEAP)
        surrogate = load_artifact(art).model
        transfer = attacks.score(server.target, images, labels, attacks=["transfer"], surrogates=[surrogate],
                                 budget=40, batch_images=4, progress=False, device="cpu")
    finally:
        server.close()
    assert remote.distances.tolist() == attacks.score(str(art), images, labels, **CHEAP).distances.tolist()
    assert transfer.summary["attacks"]["transfer"]["fooled"] > 0  # the surrogate is the model itself


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": np.zeros(3, dtype=np.int64)}, "expected 8 integer labels"),
    ({"labels": np.full(8, 10)}, r"classes in \[0, 10\)"),
    ({"images": np.full((8, 1, 28, 28), 2.0, dtype=np.float32)}, r"must lie in \[0, 1\]"),
    ({"images": np.zeros((8, 28, 28, 3), dtype=np.uint8)}, "expected uint8 N x 28 x 28 x 1"),
    ({"attacks": ["nope"]}, "unknown attack 'nope'"),
    ({"model": "no-such-folder"}, "expected a torch module, an artifact folder"),
    ({"budget": 0}, "budget: expected a positive integer"),
])
def test_bad_input_is_refused_before_any_attack_with_what_was_expected(art, data, change, message):
    images, labels = data
    call = {"model": str(art), "images": images, "labels": labels, **CHEAP, **change}
    with pytest.raises(BadInput, match=message):
        attacks.score(call.pop("model"), call.pop("images"), call.pop("labels"), **call)
