"""bench/fuzz_server.py --fast end to end: the real server, fuzzed from outside, answers every call with its contract's
status, right labels for the valid ones, busy refusals with a retry hint at its caps, and no crash or traceback."""
from __future__ import annotations

import json

import pytest

from bench import fuzz_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fuzzed_server_refuses_each_bad_call_as_documented_and_answers_the_rest_right(tmp_path, capsys):
    out = tmp_path / "fuzz.json"
    assert fuzz_server.main(["--fast", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    classes = report["classes"]
    for kind, row in classes.items():  # every call came back, and with a status its class allows
        assert sum(row["codes"].values()) == row["sent"] and set(row["codes"]) <= set(row["expected"]), (kind, row)
    assert classes["not_protobuf"]["codes"] == {"INVALID_ARGUMENT": classes["not_protobuf"]["sent"]}
    assert classes["oversized"]["codes"] == {"RESOURCE_EXHAUSTED": classes["oversized"]["sent"]}
    flood = classes["flood"]["codes"]
    assert flood["OK"] > 0 and flood["RESOURCE_EXHAUSTED"] == report["busy_with_hint"] > 0  # the caps refused some
    assert classes["after_flood"]["codes"] == {"OK": classes["after_flood"]["sent"]}
    assert report["unexpected"] == 0 and not report["crashed"] and report["exit_status"] == 0
    assert report["tracebacks"] == 0
    assert report["valid_answers"] == report["valid_right"] >= classes["valid"]["sent"] + classes["after_flood"]["sent"]
    assert report["peak_rss_bytes"] >= report["peak_rss_after_warmup_bytes"] > 0
    text = capsys.readouterr().out
    assert "tracebacks in the server log: 0" in text and "server peak RSS MiB: " in text
