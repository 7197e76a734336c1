"""Transport security and identity: TLS and mutual TLS, named callers with bearer tokens and budgets of their own.

Certificates are made at test time with the openssl command (a throwaway CA, a server certificate for
``defense.test`` only, so every client must name it, and client certificates from that CA and from a
stranger's); nothing secret is committed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from model_fixtures import SHAPE, LiveServer, make_artifact

from attacks import ArtifactModel
from attacks.scoring import api as score_api
from attacks.scoring import cli as score_cli
from avc_common.artifact import load_artifact
from avc_common.data.evalset import write_folder
from avc_common.rpc import PUSHBACK_KEY, defense_pb2, defense_pb2_grpc
from avc_common.rpc.client import (
    BudgetExhaustedError,
    DefenseClient,
    ServerUnavailableError,
    UnauthenticatedError,
)
from avc_common.rpc.credentials import ClientTls, ServerTls, token_sha256
from defense import cli as defense_cli
from defense import health, serve
from defense.callers import Caller

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SERVER_NAME = "defense.test"  # the only name in the server's certificate: not 127.0.0.1, the address tests dial
TOKENS = {"scorer": "scorer-token-1", "small": "small-token-2", "bystander": "bystander-token-3"}
BUDGETS = {"scorer": 100_000, "small": 3, "bystander": 50}


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem (+ server.pem/.key, client.pem/.key) and other-ca.pem (+ stranger.pem/.key), EC P-256, one day."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make throwaway certificates")
    root = tmp_path_factory.mktemp("pki")
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl(root, "req", "-x509", *new_key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN={ca}",
                "-days", "1")
    (root / "san.ext").write_text(f"subjectAltName=DNS:{SERVER_NAME}\n")
    for serial, (name, ca) in enumerate((("server", "ca"), ("client", "ca"), ("stranger", "other-ca")), 1):
        openssl(root, "req", *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(root, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial",
                str(serial), "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem")
    for name, token in TOKENS.items():
        (root / f"{name}.token").write_text(token + "\n")
    (root / "wrong.token").write_text("not-anyones-token\n")
    return root


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "artifact")


@pytest.fixture(scope="module")
def secured(artifact_dir, pki):
    """A TLS server with three named callers, each with its own budget."""
    callers = tuple(Caller(name, token_sha256(token), BUDGETS[name]) for name, token in TOKENS.items())
    server = LiveServer(load_artifact(artifact_dir), max_batch_size=16,
                        tls=ServerTls.load(pki / "server.pem", pki / "server.key"), callers=callers)
    yield server
    server.close()


def client_tls(pki: Path, who: str | None = None) -> ClientTls:
    cert, key = (None, None) if who is None else (pki / f"{who}.pem", pki / f"{who}.key")
    return ClientTls.load(pki / "ca.pem", cert, key, server_name=SERVER_NAME)


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def test_a_tls_server_answers_a_client_that_trusts_its_ca_and_not_a_plaintext_one(artifact_dir, pki):
    server = LiveServer(load_artifact(artifact_dir), max_batch_size=16,
                        tls=ServerTls.load(pki / "server.pem", pki / "server.key"))
    try:
        with DefenseClient(server.target, timeout_s=10, tls=client_tls(pki)) as client:
            assert client.info().caller == ""  # no callers file: the one anonymous caller
            assert client.predict(images(4)).tolist() == ArtifactModel(artifact_dir)(images(4)).tolist()
        with DefenseClient(server.target, timeout_s=1, retries=0) as plaintext, pytest.raises(ServerUnavailableError):
            plaintext.info()
    finally:
        server.close()


def test_mutual_tls_refuses_a_client_without_a_certificate_from_its_ca(artifact_dir, pki):
    server = LiveServer(load_artifact(artifact_dir), max_batch_size=16,
                        tls=ServerTls.load(pki / "server.pem", pki / "server.key", pki / "ca.pem"))
    try:
        with DefenseClient(server.target, timeout_s=10, tls=client_tls(pki, "client")) as client:
            assert len(client.predict(images(2))) == 2
        for who in (None, "stranger"):  # no certificate; one that another CA signed
            with DefenseClient(server.target, timeout_s=1, retries=0, tls=client_tls(pki, who)) as client, \
                    pytest.raises(ServerUnavailableError):
                client.info()
    finally:
        server.close()


@pytest.fixture
def folder(artifact_dir, tmp_path) -> Path:
    pictures = images(2)
    return write_folder(tmp_path / "evalset", pictures, ArtifactModel(artifact_dir)(pictures))


def score(pki: Path, target: str, folder: Path, out: Path, *credentials: str | Path) -> int:
    return score_cli.main([str(a) for a in ("--target", target, "--tls-ca", pki / "ca.pem", "--tls-server-name",
                                            SERVER_NAME, *credentials, "--data", folder, "--attacks", "hsja",
                                            "--budget", "10", "--batch-images", "2", "--no-progress",
                                            "--output", out)])


def remaining(pki: Path, target: str, who: str) -> int:
    with DefenseClient(target, timeout_s=10, tls=client_tls(pki), token=TOKENS[who]) as client:
        info = client.info()
    assert (info.caller, info.budget_total) == (who, BUDGETS[who])
    return info.budget_remaining


def test_a_named_caller_scores_on_its_own_budget(secured, pki, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(score_api, "plot_cdf", lambda *a: None)
    monkeypatch.setattr(score_api, "plot_gallery", lambda *a: None)
    assert score(pki, secured.target, folder, tmp_path / "out", "--token-file", pki / "scorer.token") == 0
    spent = BUDGETS["scorer"] - remaining(pki, secured.target, "scorer")
    assert spent == secured.server.servicer.counters.images > 0  # every image the server classified, no other's
    assert remaining(pki, secured.target, "bystander") == BUDGETS["bystander"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["model"]["info"]["caller"] == "scorer"


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_score_without_a_callers_token_exits_2_naming_the_token(secured, pki, folder, tmp_path, capsys, token):
    credentials = [] if token is None else ["--token-file", pki / f"{token}.token"]
    assert score(pki, secured.target, folder, tmp_path / "out", *credentials) == 2
    err = capsys.readouterr().err
    assert "--token-file" in err and "UNAUTHENTICATED" in err and "Traceback" not in err


def test_unauthenticated_is_final_and_no_retry_waits_for_it(secured, pki):
    for token in (None, "not-anyones-token"):
        start = time.monotonic()
        with DefenseClient(secured.target, timeout_s=10, retries=3, backoff_s=30, tls=client_tls(pki),
                           token=token) as client, pytest.raises(UnauthenticatedError):
            client.predict(images(1))
        assert time.monotonic() - start < 10  # one retry would have slept 30 s


def test_a_caller_over_its_own_budget_is_refused_without_a_retry_hint_and_others_keep_theirs(secured, pki):
    tls = client_tls(pki)
    with grpc.secure_channel(secured.target, tls.credentials(), tls.options()) as channel:
        request = defense_pb2.PredictRequest(images=[im.tobytes() for im in images(BUDGETS["small"] + 1)])
        with pytest.raises(grpc.RpcError) as refused:
            defense_pb2_grpc.DefenseStub(channel).Predict(
                request, timeout=10, metadata=(("authorization", f"Bearer {TOKENS['small']}"),))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert PUSHBACK_KEY not in dict(refused.value.trailing_metadata() or ())  # final, not "busy, come back"
    with DefenseClient(secured.target, timeout_s=10, tls=tls, token=TOKENS["small"]) as small:
        assert len(small.predict(images(BUDGETS["small"]))) == BUDGETS["small"]  # the whole budget, then no more
        with pytest.raises(BudgetExhaustedError):
            small.predict(images(1))
    assert remaining(pki, secured.target, "small") == 0
    assert remaining(pki, secured.target, "bystander") == BUDGETS["bystander"]


def test_health_answers_without_a_token_and_reflection_is_off_with_callers(secured, pki, capsys):
    assert health.main(["--target", secured.target, "--tls-ca", str(pki / "ca.pem"),
                        "--tls-server-name", SERVER_NAME]) == 0
    assert "SERVING" in capsys.readouterr().out
    tls = client_tls(pki)
    with grpc.secure_channel(secured.target, tls.credentials(), tls.options()) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        with pytest.raises(grpc.RpcError) as off:
            list(replies)
    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_server_listens_on_loopback_unless_told_otherwise():
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args(["--model", "m"]).host == "127.0.0.1"


def callers_file(path: Path, table: object) -> Path:
    path.write_text(json.dumps(table) if not isinstance(table, str) else table)
    return path


GOOD = {"team": {"token_sha256": token_sha256("t"), "query_budget": 10}}


@pytest.mark.parametrize("flags, names", [
    (["--tls-cert", "{pki}/missing.pem", "--tls-key", "{pki}/server.key"], "--tls-cert"),
    (["--tls-cert", "{pki}/server.pem", "--tls-key", "{pki}/san.ext"], "--tls-key"),  # not PEM
    (["--tls-cert", "{pki}/server.pem", "--tls-key", "{pki}/client.key"], "--tls-key"),  # another certificate's key
    (["--tls-cert", "{pki}/server.key", "--tls-key", "{pki}/server.key"], "--tls-cert"),  # a key, not a certificate
    (["--tls-cert", "{pki}/server.pem"], "--tls-key"),
    (["--tls-client-ca", "{pki}/ca.pem"], "--tls-cert"),
    (["--tls-cert", "{pki}/server.pem", "--tls-key", "{pki}/server.key", "--tls-client-ca", "{pki}/server.key"],
     "--tls-client-ca"),
    (["--callers", "{pki}/missing.json"], "--callers"),
    (["--callers", "{tmp}/plain.json"], "callers.team.token_sha256"),  # the token itself, not its hash
    (["--callers", "{tmp}/twice.json"], "twice"),
    (["--callers", "{tmp}/good.json", "--query-budget", "5"], "--query-budget"),
])
def test_serve_refuses_unusable_tls_or_callers_files_before_loading_the_model(pki, tmp_path, capsys, flags, names):
    callers_file(tmp_path / "plain.json", {"team": {"token_sha256": "t", "query_budget": 10}})
    one, two = (json.dumps({"token_sha256": token_sha256(t), "query_budget": 1}) for t in "ab")
    callers_file(tmp_path / "twice.json", f'{{"team": {one}, "team": {two}}}')  # json.dumps cannot repeat a key
    callers_file(tmp_path / "good.json", GOOD)
    argv = [flag.format(pki=pki, tmp=tmp_path) for flag in flags]
    assert defense_cli.main(["serve", "--model", str(tmp_path / "never-loaded"), *argv]) == 2
    err = capsys.readouterr().err
    assert names in err and "never-loaded" not in err and "Traceback" not in err


@pytest.mark.parametrize("flags, names", [
    (["--tls-cert", "{pki}/client.pem", "--tls-key", "{pki}/client.key"], "--tls-cert"),  # mutual TLS needs --tls-ca
    (["--tls-ca", "{pki}/client.key"], "--tls-ca"),
    (["--tls-ca", "{pki}/ca.pem", "--token-file", "{pki}/missing.token"], "--token-file"),
])
def test_a_client_with_unusable_credentials_exits_2_before_any_call(pki, tmp_path, capsys, flags, names):
    argv = [flag.format(pki=pki) for flag in flags]
    assert score_cli.main(["--target", "127.0.0.1:1", *argv, "--attacks", "hsja",
                           "--output", str(tmp_path / "out")]) == 2
    assert names in capsys.readouterr().err
    if "--token-file" not in argv:
        assert health.main(["--target", "127.0.0.1:1", *argv]) == 2
        assert names in capsys.readouterr().err


def test_a_score_past_the_callers_own_budget_says_a_plain_rerun_cannot_help(secured, pki, folder, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setattr(score_api, "plot_cdf", lambda *a: None)
    monkeypatch.setattr(score_api, "plot_gallery", lambda *a: None)
    assert score(pki, secured.target, folder, tmp_path / "out", "--token-file", pki / "small.token") == 3
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED" in err and "once the server has budget left for you" in err, err
    assert "rerun the same command to resume" not in err
