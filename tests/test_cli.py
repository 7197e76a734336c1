"""The commands' shared vocabulary: every console script answers --help with its flags and defaults, a bad number
or device exits 2 naming the flag and what it allows before any work, and `python -m defense` imports only the
subcommand it runs."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from attacks.scoring import cli as score_cli
from avc_common.cli import write_json
from defense import cli as defense_cli
from defense.process import free_port
from defense.submission import check
from defense.submission.manifest import option, with_option
from training import train_tiny

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# console script -> flags its help must show, with the default it must state
HELP = {
    "avc-train": ["--data DIR", "--dataset", "--output DIR", "--batch-size", "--threads N", "--no-progress",
                  "(default: auto)", "(default: 128)"],
    "avc-evaluate": ["--model PATH", "--data DIR", "--json PATH", "--steps K", "--no-progress", "(default: auto)"],
    "avc-serve": ["--model DIR", "--port", "--threads N", "(default: cpu)", "(default: 50051)"],
    "avc-health": ["--target", "--timeout-s SECONDS", "(default: 5.0)"],
    "avc-check": ["manifest", "--data DIR", "--json PATH", "--throughput-images N", "(default: crisp.yaml)"],
    "avc-score": ["--target", "--dataset", "--data DIR", "--output DIR", "--json PATH", "--no-progress",
                  "(default: auto)", "(default: 1000)"],
}


def entry_point(script: str):
    module, function = SCRIPTS[script].split(":")
    return getattr(importlib.import_module(module), function)


def exit_code(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


def test_every_console_script_is_documented_here():
    assert set(SCRIPTS) == set(HELP)


@pytest.mark.parametrize("script", sorted(HELP))
def test_help_lists_the_flags_with_their_defaults(script, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    assert exit_code(entry_point(script), ["--help"]) == 0
    text = capsys.readouterr().out
    missing = [flag for flag in HELP[script] if flag not in text]
    assert missing == [], text
    assert "(default: None)" not in text


BAD_NUMBERS = [  # (console script, argv, the flag, the allowed range the message must state)
    ("avc-train", ["--batch-size", "0"], "--batch-size", "an integer >= 1"),
    ("avc-train", ["--momentum", "1.5"], "--momentum", "a number in [0.0, 1.0]"),
    ("avc-train", ["--lr", "nan"], "--lr", "a number > 0.0"),
    ("avc-train", ["--final-eval-images", "-2"], "--final-eval-images", "an integer >= -1"),
    ("avc-evaluate", ["--model", "m", "--steps", "-3"], "--steps", "an integer >= 1"),
    ("avc-serve", ["--model", "m", "--port", "70000"], "--port", "an integer in [0, 65535]"),
    ("avc-health", ["--timeout-s", "0"], "--timeout-s", "a number > 0.0"),
    ("avc-check", ["--throughput-images", "-1"], "--throughput-images", "an integer >= 0"),
    ("avc-score", ["--target", "t", "--budget", "0"], "--budget", "an integer >= 1"),
]


@pytest.mark.parametrize("script,argv,flag,allowed", BAD_NUMBERS,
                         ids=[f"{s} {' '.join(a)}" for s, a, *_ in BAD_NUMBERS])
def test_a_bad_number_exits_2_naming_the_flag_and_its_range(script, argv, flag, allowed, capsys):
    assert exit_code(entry_point(script), argv) == 2
    err = capsys.readouterr().err
    assert flag in err and allowed in err, err


def test_train_tiny_batch_size_0_stops_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert exit_code(train_tiny.main, ["--batch-size", "0", "--output", str(out)]) == 2
    assert "argument --batch-size: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("script,argv", [("avc-train", []), ("avc-evaluate", ["--model", "m"]),
                                         ("avc-serve", ["--model", "m"]), ("avc-score", ["--target", "t"])])
def test_cuda_without_cuda_exits_2(script, argv, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert exit_code(entry_point(script), [*argv, "--device", "cuda"]) == 2
    assert "argument --device: cuda: CUDA is not available on this machine" in capsys.readouterr().err


def test_device_auto_is_cpu_without_cuda_and_other_names_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_tiny.parse_args([]).device == torch.device("cpu")
    assert train_tiny.parse_args(["--device", "cpu"]).device == torch.device("cpu")
    assert exit_code(train_tiny.parse_args, ["--device", "gpu"]) == 2
    assert "expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_old_spellings_still_work_with_a_deprecation_note(capsys):
    assert train_tiny.parse_args(["--output-dir", "runs/x"]).output == Path("runs/x")
    assert "--output-dir is deprecated, use --output" in capsys.readouterr().err
    assert train_tiny.parse_args([]).output == Path("runs/train")
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    assert parser.parse_args(["--images", "eval"]).data == Path("eval")
    assert "--images is deprecated, use --data" in capsys.readouterr().err


def test_score_dataset_follows_data(tmp_path, capsys):
    assert score_cli.parse_args(["--target", "t"]).dataset == "fashion_mnist"
    assert score_cli.parse_args(["--target", "t", "--data", str(tmp_path)]).dataset == "folder"
    args = score_cli.parse_args(["--target", "t", "--dataset", "tiny_imagenet", "--data", str(tmp_path)])
    assert (args.dataset, args.data) == ("tiny_imagenet", tmp_path)
    assert exit_code(score_cli.parse_args, ["--target", "t", "--data", "fashion_mnist"]) == 2  # the old spelling
    assert "name the data set with --dataset fashion_mnist" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv, flag, where, problem", [
    ("avc-score", ["--target", "t"], "--output", "file", "expected a folder, but {file} is a file"),
    ("avc-score", ["--target", "t"], "--output", "file/run", "expected a folder path, but {file} is a file"),
    ("avc-score", ["--target", "t"], "--json", "folder", "expected a file, but {folder} is a folder"),
    ("avc-train", [], "--output", "file", "expected a folder, but {file} is a file"),
    ("avc-evaluate", ["--model", "m"], "--json", "folder", "expected a file, but {folder} is a folder"),
    ("avc-check", [], "--json", "file/report.json", "expected a file path, but {file} is a file"),
])
def test_an_output_or_json_that_cannot_be_written_exits_2_before_any_work(tmp_path, capsys, script, argv, flag,
                                                                          where, problem):
    """Every command checks --output and --json while parsing (avc_common.cli.writable), not once the work is done."""
    paths = {"file": tmp_path / "file", "folder": tmp_path}
    paths["file"].write_text("not a folder")
    path = paths.get(where, tmp_path / where)
    assert exit_code(entry_point(script), [*argv, flag, str(path)]) == 2
    assert f"argument {flag}: {problem.format(**paths)}\n" in capsys.readouterr().err
    assert paths["file"].read_text() == "not a folder"


def test_score_help_says_how_long_a_missing_server_is_tried(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")
    assert exit_code(score_cli.main, ["--help"]) == 0
    text = capsys.readouterr().out
    assert "given up after the pauses alone (6.2 s with the defaults)" in text and "(186 s)" in text, text


@pytest.mark.parametrize("target, reason", [("127.0.0.1:{port}", "connection refused"),
                                            ("no-such-host.invalid:50051", "cannot resolve host")])
def test_health_says_why_it_found_no_server(target, reason, capsys):
    target = target.format(port=free_port())
    assert entry_point("avc-health")(["--target", target, "--timeout-s", "2"]) == 1
    err = capsys.readouterr().err
    assert f"no answer from {target} after " in err and f" s: {reason}; " in err, err  # at once: no deadline spent
    assert err.count(target) == 1 and len(err.splitlines()) == 1, err


def test_json_dash_writes_to_stdout(tmp_path, capsys):
    write_json(Path("-"), '{"a": 1}\n')
    write_json(tmp_path / "out.json", '{"b": 2}\n')
    write_json(None, "nothing")
    assert capsys.readouterr().out == '{"a": 1}\n'
    assert (tmp_path / "out.json").read_text() == '{"b": 2}\n'


@pytest.mark.parametrize("argv", [["serve", "--model", "/m", "--port", "1"], ["--model=/m", "--port", "1", "--port=2"],
                                  ["--model", "/m", "--model", "/n"], ["--port", "1"], []])
def test_an_option_set_in_an_argv_is_read_back(argv):
    for value in ("/a", "9"):
        changed = with_option(argv, "--model", value)
        assert option(changed, "--model") == value
        assert option(changed, "--port") == option(argv, "--port")


@pytest.fixture
def no_yaml(monkeypatch):
    """PyYAML not installed (as in the server image): importing it fails, and the check is not imported yet."""
    monkeypatch.setitem(sys.modules, "yaml", None)
    for name in ("defense.submission.check", "defense.submission.manifest"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_check_without_its_extra_says_what_to_install(no_yaml, capsys):
    assert defense_cli.main(["check", "crisp.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "python -m defense check: needs yaml, which is not installed: pip install 'trades-avc[check]'\n"


def test_the_other_subcommands_do_not_import_the_check(no_yaml, capsys):
    assert exit_code(defense_cli.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("serve", "health", "check"))
    for command in ("serve", "health"):
        assert exit_code(defense_cli.main, [command, "--help"]) == 0
    assert "defense.submission.check" not in sys.modules


def test_an_unknown_subcommand_exits_2(capsys):
    assert exit_code(defense_cli.main, ["nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["training/train_tiny.py"], ["training/evaluate.py"], ["training/sweep.py"],
                                     ["training/theorem31.py"], ["attacks/score.py"], ["-m", "defense"]])
def test_the_documented_commands_run_from_the_repository_root(command):
    run = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stderr
