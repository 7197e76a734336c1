"""`python attacks/score.py`: the score's rules, its report, resuming, a dying server, and bad input."""
from __future__ import annotations

import datetime
import json
import re
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from model_fixtures import SHAPE, LiveServer, SlowForward, make_artifact
from PIL import Image
from torch import nn

from attacks import ArtifactModel
from attacks.scoring import api as score_api
from attacks.scoring import cli as score_cli
from attacks.scoring import pipeline as scoring
from attacks.scoring.evaldata import EvalDataError, load_eval_data
from attacks.scoring.plots import cdf_figure
from avc_common import __version__
from avc_common.artifact import Artifact, load_artifact, save_artifact
from avc_common.data.evalset import folder_problems, load_folder, write_folder
from avc_common.data.fashion_mnist import load_fashion_split
from avc_common.rpc.client import DefenseClient, ServerUnavailableError
from defense.process import free_port

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IMAGES = 8
CHEAP = ["--attacks", "contrast,hsja", "--budget", "40", "--batch-images", "4", "--no-progress"]
TIMING = {"wall_time_s", "session_wall_time_s", "command", "error", "complete", "created"}
WAIT_S = 20  # how long a test's rendezvous between threads may take before it counts as broken


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture(scope="module")
def folder(artifact_dir, tmp_path_factory) -> Path:
    """Competition-format images the model classifies as labelled, except image 1 (labelled otherwise)."""
    images = np.random.default_rng(1).integers(0, 256, size=(N_IMAGES, *SHAPE), dtype=np.uint8)
    labels = ArtifactModel(artifact_dir)(images)
    labels[1] = (labels[1] + 1) % 10
    return write_folder(tmp_path_factory.mktemp("evalset"), images, labels)


@pytest.fixture
def no_plots(monkeypatch):
    """Skips cdf.png and gallery.png (most of a small score's time) in tests about what the runs compute."""
    monkeypatch.setattr(score_api, "plot_cdf", lambda *a: None)
    monkeypatch.setattr(score_api, "plot_gallery", lambda *a: None)


def score(*argv: str | Path) -> int:
    return score_cli.main([str(a) for a in argv])


def read(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def unit_threads() -> list[threading.Thread]:
    """The scorer's worker threads still alive (none may outlive a score)."""
    return [t for t in threading.enumerate() if t.name.startswith("score-unit")]


def comparable(value):
    """``value`` without what legitimately differs between two runs of one command (times, output path)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def test_a_model_that_is_always_wrong_scores_zero(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.arange(10.0))  # always class 9
    art = save_artifact(net.eval(), tmp_path / "art", input_shape=SHAPE, class_names=[f"c{i}" for i in range(10)],
                        arch="constant", dataset="test", training={}, metrics={})
    images = np.random.default_rng(0).integers(0, 256, size=(6, *SHAPE), dtype=np.uint8)
    data = write_folder(tmp_path / "data", images, np.arange(6) % 9)
    assert score("--model", art, "--data", data, "--output", tmp_path / "out", "--reference-steps", "5", *CHEAP) == 0
    s = read(tmp_path / "out")["summary"]
    assert s["mean"] == s["median"] == 0.0 and s["clean_accuracy"] == 0.0 and s["misclassified"] == 6
    assert s["queries"]["attacks_total"] == 2 * 6  # the clean check of each image by each attack, nothing more


def test_reference_starts_from_the_suites_adversarials_so_it_is_never_farther(artifact_dir, folder, tmp_path):
    """One FMN step from the clean image finds nothing; from each image's winning adversarial it keeps that point."""
    out = tmp_path / "out"
    assert score("--model", artifact_dir, "--data", folder, "--output", out, "--reference-steps", "1", *CHEAP) == 0
    fooled = [image for image in read(out)["images"] if image["fooled"]]
    assert fooled and all(image["reference"] is not None and image["reference"] <= image["distance"] + 1e-9
                          for image in fooled)


def test_report_has_every_field_and_only_verified_adversarials(artifact_dir, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert score("--model", artifact_dir, "--data", folder, "--output", out, "--reference-steps", "20", *CHEAP) == 0
    r = read(out)
    assert r["complete"] and r["error"] is None and r["command"].startswith("python attacks/score.py --model")
    assert r["budget"]["rule"] == "per_image" and r["budget"]["queries"] == 40 and "farthest image" in r["worst_case"]
    assert r["model"]["manifest"]["arch"] == "small_cnn" and r["trades_avc_version"] == __version__
    s = r["summary"]
    for key in ("images", "mean", "median", "clean_accuracy", "fooled", "not_fooled", "queries", "wall_time_s",
                "attacks", "reference", "unverified"):
        assert key in s, key
    assert s["images"] == N_IMAGES and s["clean_accuracy"] == (N_IMAGES - 1) / N_IMAGES and s["unverified"] == []
    assert set(s["attacks"]) == {"contrast", "hsja"}
    for a in s["attacks"].values():
        for key in ("settings", "success_rate", "median", "mean", "wins", "queries_total", "queries_max",
                    "images_per_call"):
            assert key in a, key
        assert a["queries_max"] <= 40
    assert s["reference"]["median"] is not None and s["reference"]["suite_over_reference_median"] >= 1
    assert 0 <= s["reference"]["closer_than_suite"] <= N_IMAGES
    by_index = {image["index"]: image for image in r["images"]}
    assert by_index[1]["misclassified"] and by_index[1]["distance"] == 0.0
    for image in r["images"]:
        best = min((a["distance"] for a in image["attacks"].values() if a["distance"] is not None), default=None)
        if image["fooled"]:
            assert image["distance"] == best > 0 and image["adversarial_label"] != image["label"]
            assert image["reference"] <= image["distance"] + 1e-9  # FMN also refines the suite's adversarial
            assert image["attacks"][image["winner"]]["distance"] == best
    assert r["distances"] == [image["distance"] for image in r["images"]]
    assert np.median(r["distances"]) == pytest.approx(s["median"])
    assert (out / "cdf.png").read_bytes()[:4] == b"\x89PNG" and (out / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert f"{s['median']:.4f}" in report and "| hsja |" in report and r["command"] in report
    assert f"median {s['median']:.4f}" in capsys.readouterr().out


def test_pooled_budget_lets_an_attack_spend_more_on_some_images_but_not_more_in_all(artifact_dir, folder, tmp_path):
    out = tmp_path / "out"
    assert score("--model", artifact_dir, "--data", folder, "--output", out, "--no-reference", "--pooled",
                 "--attacks", "hsja", "--budget", "30", "--batch-images", "8", "--no-progress") == 0
    r = read(out)
    queries = [image["attacks"]["hsja"]["queries"] for image in r["images"]]
    assert r["budget"]["rule"] == "pooled" and sum(queries) <= 30 * N_IMAGES and max(queries) > 30


def test_chained_attacks_refine_the_ones_before_within_their_own_budgets(artifact_dir, folder, tmp_path, no_plots):
    """--chain: each attack starts from the adversarials of those before it, so an image's distance never grows along
    the suite; each still spends at most its budget; the suite gets closer than the same attacks run apart; and the
    output folder is not resumed as an unchained run."""
    args = ["--model", artifact_dir, "--data", folder, "--no-reference", *CHEAP]
    assert score(*args, "--output", tmp_path / "apart") == 0
    assert score(*args, "--chain", "--output", tmp_path / "chained") == 0
    apart, chained = read(tmp_path / "apart"), read(tmp_path / "chained")
    assert chained["budget"]["chained"] and not apart["budget"]["chained"]
    assert "chained" in chained["budget"]["description"]
    for image in chained["images"]:
        first, then = image["attacks"]["contrast"], image["attacks"]["hsja"]
        assert then["queries"] <= 40 and first["queries"] <= 40
        if first["distance"] is not None:
            assert then["distance"] is not None and then["distance"] <= first["distance"]
    assert chained["summary"]["median"] < apart["summary"]["median"]
    assert score(*args, "--output", tmp_path / "chained") == score_cli.BAD_INPUT  # not the run saved there


@pytest.mark.parametrize("chain", [[], ["--chain"]], ids=["apart", "chained"])
def test_resumed_run_gives_the_same_report_as_an_uninterrupted_one(artifact_dir, folder, tmp_path, monkeypatch,
                                                                    no_plots, chain):
    """Ctrl-C (in the main thread, while it reports the first chunk) with a unit of the second chunk halfway: that
    unit stops at its next model call, the first chunk's results stay, and the rerun completes the same report."""
    args = ["--model", artifact_dir, "--data", folder, "--no-reference", *CHEAP, *chain]
    assert score(*args, "--output", tmp_path / "whole") == 0

    reports, halfway, after_stop = [], threading.Event(), []
    write = score_cli.write_reports

    def interrupt_after_first_chunk(*a, **k):
        results = write(*a, **k)
        reports.append(1)
        if len(reports) == 1:
            assert halfway.wait(WAIT_S)
            raise KeyboardInterrupt
        return results

    call = scoring.CountingModel.__call__

    def wait_in_second_chunk(self, images):
        if self.chunk == 1 and self.calls == 2 and not halfway.is_set():  # the third call of a second-chunk unit
            halfway.set()
            assert self.control.stop.wait(WAIT_S)
            after_stop.append(self.calls)
        return call(self, images)

    monkeypatch.setattr(score_cli, "write_reports", interrupt_after_first_chunk)
    monkeypatch.setattr(scoring.CountingModel, "__call__", wait_in_second_chunk)
    assert score(*args, "--output", tmp_path / "cut") == score_cli.INTERRUPTED
    assert after_stop == [2] and not unit_threads()
    partial = read(tmp_path / "cut")
    assert not partial["complete"] and partial["summary"]["images"] == 4 and partial["error"] == "interrupted"
    assert not list((tmp_path / "cut" / "state").glob("c0001-*"))  # the unit cut halfway left nothing
    monkeypatch.undo()
    assert score(*args, "--output", tmp_path / "cut") == 0
    assert comparable(read(tmp_path / "cut")) == comparable(read(tmp_path / "whole"))


def test_units_run_concurrently_against_a_server_with_the_same_results_and_state(artifact_dir, folder, tmp_path,
                                                                                 monkeypatch, no_plots):
    """--concurrency 1, 3 and the --target default (4) give the same images and the same state files; with the
    default, two units' requests are in flight at once (they meet inside the client before going on)."""
    args = ["--data", folder, *CHEAP, "--batch-images", "3"]  # chunks of 3, 3 and 2 images: 6 units
    # One image per forward, so no label can depend on which other requests shared its batch (float rounding):
    # the scorer's determinism is under test here, not the model's batch invariance.
    server = LiveServer(load_artifact(artifact_dir), max_batch_size=1)
    try:
        for concurrency in ("1", "3"):
            assert score("--target", server.target, *args, "--concurrency", concurrency,
                         "--output", tmp_path / concurrency) == 0

        predict, meet, lock = DefenseClient.predict, threading.Barrier(2, timeout=WAIT_S), threading.Lock()
        calls = {"started": 0, "in_flight": 0, "most": 0}

        def recorded(self, images):
            with lock:
                calls["started"] += 1
                calls["in_flight"] += 1
                calls["most"] = max(calls["most"], calls["in_flight"])
                first_two = calls["started"] <= 2
            if first_two:
                meet.wait()  # broken (and the score failed) unless a second call comes while the first waits
            try:
                return predict(self, images)
            finally:
                with lock:
                    calls["in_flight"] -= 1

        monkeypatch.setattr(DefenseClient, "predict", recorded)
        assert score("--target", server.target, *args, "--output", tmp_path / "default") == 0
    finally:
        server.close()
    assert calls["most"] >= 2 and not unit_threads()
    one = read(tmp_path / "1")
    assert one["concurrency"] == 1 and read(tmp_path / "default")["concurrency"] == 4
    for other in ("3", "default"):
        assert comparable(read(tmp_path / other)["images"]) == comparable(one["images"])
        for path in sorted((tmp_path / "1" / "state").iterdir()):
            with np.load(path) as a, np.load(tmp_path / other / "state" / path.name) as b:
                assert sorted(a.files) == sorted(b.files)
                for key in set(a.files) - {"seconds"}:
                    assert np.array_equal(a[key], b[key]), (path.name, key)


def test_a_failing_unit_stops_the_others_and_exits_3_with_the_finished_chunks(artifact_dir, folder, tmp_path,
                                                                            monkeypatch, capsys, no_plots):
    """Both units of the second chunk run once the first chunk is reported; at their second call one fails as a
    server that went away, and the other is stopped at its next call: exit 3, the first chunk's results kept."""
    out = tmp_path / "out"
    reported, both, stopped = threading.Event(), threading.Barrier(2, timeout=WAIT_S), []
    write = score_cli.write_reports
    monkeypatch.setattr(score_cli, "write_reports", lambda *a, **k: (write(*a, **k), reported.set())[0])
    call = scoring.CountingModel.__call__

    def fail_in_second_chunk(self, images):
        if self.chunk == 1:
            assert reported.wait(WAIT_S)
            if self.calls == 1:
                if both.wait() == 0:
                    raise ServerUnavailableError(grpc.StatusCode.UNAVAILABLE, "gone")
                stopped.append(self.control.stop.wait(WAIT_S))
        return call(self, images)

    monkeypatch.setattr(scoring.CountingModel, "__call__", fail_in_second_chunk)
    server = LiveServer(load_artifact(artifact_dir), max_batch_size=64)
    try:
        assert score("--target", server.target, "--data", folder, "--output", out, "--concurrency", "3",
                     *CHEAP) == score_cli.MODEL_UNAVAILABLE
    finally:
        server.close()
    assert stopped == [True] and not unit_threads()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "stopped answering (UNAVAILABLE: gone)" in error[0], error
    partial = read(out)
    assert not partial["complete"] and partial["summary"]["images"] == 4 and "stopped answering" in partial["error"]
    assert sorted(p.name for p in (out / "state").iterdir()) == ["c0000-a00.npz", "c0000-a01.npz",
                                                                 "c0000-verify.npz"]


def test_a_server_killed_mid_run_gives_a_clear_error_and_a_resumable_report(artifact_dir, folder, tmp_path,
                                                                          monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--data", folder, "--output", out, "--timeout-s", "1", "--retries", "1", *CHEAP]
    server = LiveServer(load_artifact(artifact_dir), max_batch_size=64)
    write = score_cli.write_reports

    def kill_after_first_chunk(*a, **k):
        results = write(*a, **k)
        if server.loop.is_running():
            server.close()
        return results

    monkeypatch.setattr(score_cli, "write_reports", kill_after_first_chunk)
    assert score("--target", server.target, *args) == score_cli.MODEL_UNAVAILABLE
    monkeypatch.undo()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "stopped answering" in error[0] and "rerun the same command" in error[0]
    partial = read(out)
    assert not partial["complete"] and partial["summary"]["images"] == 4 and "stopped answering" in partial["error"]
    saved = {path: path.stat().st_mtime_ns for path in (out / "state").iterdir()}

    server = LiveServer(load_artifact(artifact_dir), max_batch_size=64)  # back, on another port
    try:
        assert score("--target", server.target, *args) == 0
    finally:
        server.close()
    done = read(out)
    assert done["complete"] and done["summary"]["images"] == N_IMAGES
    assert comparable(done["images"][:4]) == comparable(partial["images"])
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in saved.items())  # the first chunk was not redone


def test_a_slow_model_is_scored_to_the_end_with_the_same_results(artifact_dir, folder, tmp_path):
    """Every call takes far longer than --timeout-s and no retry is allowed: the score still completes, equal to
    the same score against a fast server (deadlines follow the server's measured pace)."""
    artifact = load_artifact(artifact_dir)
    args = ["--data", folder, "--retries", "0", *CHEAP]
    fast = LiveServer(artifact, max_batch_size=64)
    try:
        assert score("--target", fast.target, *args, "--output", tmp_path / "fast") == 0
    finally:
        fast.close()
    slow = LiveServer(Artifact(SlowForward(artifact.model, per_image_s=0.005), artifact.manifest), max_batch_size=64)
    try:
        assert score("--target", slow.target, *args, "--timeout-s", "0.05", "--output", tmp_path / "slow") == 0
    finally:
        slow.close()
    assert comparable(read(tmp_path / "slow")["images"]) == comparable(read(tmp_path / "fast")["images"])


def test_fashion_mnist_source_scores_the_first_test_images(artifact_dir, fmnist_dir, tmp_path):
    out = tmp_path / "out"
    assert score("--model", artifact_dir, "--dataset", "fashion_mnist", "--data", fmnist_dir, "--images", "3",
                 "--no-reference", "--output", out, *CHEAP) == 0
    _, labels = load_fashion_split(fmnist_dir, "test")
    assert [(i["index"], i["label"]) for i in read(out)["images"]] == list(enumerate(labels[:3].tolist()))


def test_tiny_imagenet_val_layout_loads_and_a_shape_mismatch_is_explained(tmp_path):
    root = tmp_path / "tiny"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("n01\nn02\n")
    (root / "words.txt").write_text("n01\tfirst\nn02\tsecond\n")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t9\t9\nval_1.JPEG\tn01\t0\t0\t9\t9\n")
    for name in ("val_0.JPEG", "val_1.JPEG"):
        Image.new("RGB", (64, 64), (90, 20, 200)).save(root / "val" / "images" / name)
    data = load_eval_data("tiny_imagenet", root, (64, 64, 3), 2, progress=False)
    assert data.images.shape == (2, 64, 64, 3) and data.labels.tolist() == [1, 0]
    with pytest.raises(EvalDataError, match=r"images are 64 x 64 x 3 but the model takes 28 x 28 x 1"):
        load_eval_data("tiny_imagenet", root, SHAPE, 2, progress=False)
    with pytest.raises(EvalDataError, match="needs --data DIR"):
        load_eval_data("tiny_imagenet", None, (64, 64, 3), 2)


@pytest.mark.parametrize("case, message", [
    ("missing folder", "--data: .*nowhere is not a folder"),
    ("wrong image shape", r"not uint8 28 x 28 x 1 \(H x W x C\) arrays: 00000.npy \(uint8 \(10, 10, 3\)\)"),
    ("unknown attack", "--attacks: unknown attack 'nope'"),
    ("other run in output", r"holds a run with other settings \(budget\)"),
])
def test_bad_input_exits_2_saying_what_was_expected(artifact_dir, folder, tmp_path, capsys, case, message):
    out, data, extra = tmp_path / "out", folder, []
    if case == "missing folder":
        data = tmp_path / "nowhere"
    elif case == "wrong image shape":
        data = write_folder(tmp_path / "small", np.zeros((2, 10, 10, 3), dtype=np.uint8), [0, 1])
    elif case == "unknown attack":
        extra = ["--attacks", "contrast,nope"]
    else:
        assert score("--model", artifact_dir, "--data", data, "--output", out, "--no-reference", "--images", "1",
                     *CHEAP) == 0
        extra = ["--budget", "41"]
    capsys.readouterr()
    assert score("--model", artifact_dir, "--data", data, "--output", out, "--no-reference", "--images", "1",
                 *CHEAP, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err


def test_a_surrogate_for_other_images_exits_2_before_any_attack_runs(artifact_dir, folder, tmp_path, capsys):
    surrogate = save_artifact(nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 10)).eval(), tmp_path / "surrogate",
                              input_shape=(8, 8, 3), class_names=[f"c{i}" for i in range(10)], arch="linear",
                              dataset="test", training={}, metrics={})
    out = tmp_path / "out"
    assert score("--model", artifact_dir, "--data", folder, "--output", out, "--no-reference", "--surrogate",
                 surrogate, *CHEAP, "--attacks", "transfer") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --surrogate: surrogate {surrogate} takes (8, 8, 3) images with 10 classes; the target "
                   f"takes (28, 28, 1) with 10"], err
    assert not out.exists()


@pytest.mark.parametrize("where, reason", [("refused", "connection refused"), ("unknown host", "cannot resolve host"),
                                           ("silent", "timed out")])
def test_no_server_at_the_target_says_why_and_exits_3_without_waiting_out_every_deadline(tmp_path, capsys, where,
                                                                                         reason):
    """A refused port or an unknown host fails each attempt at once (one 0.2 s pause for --retries 1, not two 5 s
    deadlines); a port that accepts and never answers costs its --timeout-s."""
    out, timing = tmp_path / "out", ["--timeout-s", "5", "--retries", "1"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete in the kernel; nothing ever answers them
        if where == "silent":
            target, timing = f"127.0.0.1:{silent.getsockname()[1]}", ["--timeout-s", "0.5", "--retries", "0"]
        else:
            target = f"127.0.0.1:{free_port()}" if where == "refused" else "no-such-host.invalid:50051"
        start = time.monotonic()
        assert score("--target", target, "--output", out, *timing, *CHEAP) == score_cli.MODEL_UNAVAILABLE
        took_s = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    expected = rf"error: no answer from {re.escape(target)} after [\d.]+ s: {reason}; "
    assert len(err) == 1 and re.match(expected, err[0]), err
    assert took_s < 4 and not out.exists()


def test_a_server_that_answered_and_went_away_is_reported_as_refused_not_as_a_deadline(artifact_dir):
    server = LiveServer(load_artifact(artifact_dir))
    with DefenseClient(server.target, timeout_s=0.5, retries=0) as client:
        assert client.health() == "SERVING"
        server.close()
        with pytest.raises(ServerUnavailableError) as caught:
            client.health()  # waits for the server to come back (it may be restarting), then asks why it did not
    assert caught.value.reason == "connection refused"
    message = str(caught.value)
    assert re.match(rf"no answer from {re.escape(server.target)} after [\d.]+ s: connection refused; ", message)


def test_a_finished_score_has_a_versioned_report_and_its_verified_adversarials_exported(artifact_dir, folder,
                                                                                       tmp_path, no_plots):
    """results.json opens with its format, time and version; adversarials.npz holds the fooled images, which the
    model labels as recorded (never the true label) at the recorded distances; adversarials/ is an evaluation set."""
    out = tmp_path / "out"
    assert score("--model", artifact_dir, "--data", folder, "--output", out, "--no-reference", *CHEAP) == 0
    r = read(out)
    assert list(r)[:3] == ["schema_version", "created", "toolkit_version"]
    assert r["schema_version"] == 1 and r["toolkit_version"] == __version__
    created = datetime.datetime.fromisoformat(r["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - created).total_seconds()) < 600
    fooled = [image for image in r["images"] if image["fooled"]]
    assert fooled
    with np.load(out / "adversarials.npz", allow_pickle=False) as saved:
        adv = dict(saved)
    assert adv["images"].dtype == np.uint8 and adv["images"].shape == (len(fooled), *SHAPE)
    assert adv["indices"].tolist() == [image["index"] for image in fooled]
    assert adv["names"].tolist() == [image["name"] for image in fooled]
    assert adv["labels"].tolist() == [image["label"] for image in fooled]
    assert adv["adversarial_labels"].tolist() == [image["adversarial_label"] for image in fooled]
    relabelled = ArtifactModel(artifact_dir)(adv["images"])
    assert relabelled.tolist() == adv["adversarial_labels"].tolist()
    assert (relabelled != adv["labels"]).all()
    clean = load_folder(folder).images[adv["indices"]]
    l2 = np.linalg.norm((adv["images"].astype(np.float64) - clean).reshape(len(clean), -1) / 255, axis=1)
    assert adv["distances"] == pytest.approx(l2) and adv["distances"].tolist() == [i["distance"] for i in fooled]
    assert folder_problems(out / "adversarials", SHAPE, 10, flag="--data") == []
    exported = load_folder(out / "adversarials")
    assert exported.names == adv["names"].tolist()  # the input was a folder: its file names are kept
    assert np.array_equal(exported.images, adv["images"]) and np.array_equal(exported.labels, adv["labels"])


def test_the_distance_cdf_axes_start_at_0_even_when_every_image_is_misclassified():
    n = 3
    scores = scoring.Scores(names=["contrast"], distances=np.zeros((1, n)), queries=np.ones((1, n), dtype=np.int64),
                            seconds=np.zeros(1), calls=np.ones(1, dtype=np.int64),
                            verified_labels=np.full(n, -1), adversarials=np.zeros((n, *SHAPE), dtype=np.uint8),
                            reference=None)
    for distances in (np.zeros((1, n)), np.array([[0.0, 0.7, np.inf]])):
        scores.distances = distances
        ax = cdf_figure(scores).axes[0]
        assert ax.get_xlim()[0] == 0 < ax.get_xlim()[1] and ax.get_ylim()[0] == 0
