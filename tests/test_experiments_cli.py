"""The shared command line of the experiment scripts."""

from pathlib import Path

import pytest
import torch

from mpqlab.experiments.cli import experiment_parser, parse_experiment_args, report_written


def test_defaults_and_threads_applied():
    before = torch.get_num_threads()
    try:
        parser = experiment_parser("Make a thing.\n\nMore text.", Path("out.json"))
        parser.add_argument("--steps", type=int, default=3)
        args = parse_experiment_args(parser, ["--threads", "1", "--steps", "5"])
        assert (args.threads, args.out, args.steps) == (1, Path("out.json"), 5)
        assert parser.description == "Make a thing." and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_zero_threads_is_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_experiment_args(experiment_parser("x", None), ["--threads", "0"])
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_report_line(capsys):
    report_written(Path("r.json"), {"seconds": 12.4})
    assert capsys.readouterr().out == "wrote r.json in 12 s\n"


def test_finish_result_stamps_and_writes_atomically(tmp_path):
    import json
    import time

    from mpqlab.experiments.cli import finish_result

    out = tmp_path / "r.json"
    result = finish_result({"runs": [1]}, time.perf_counter() - 2.0, out)
    assert result["seconds"] >= 2.0 and result["timestamp"].endswith("+00:00")
    assert json.loads(out.read_text()) == result
    assert "seconds" in finish_result({}, time.perf_counter(), None)  # None: nothing written


def test_resumable_result_keeps_points_of_the_same_settings_only(tmp_path):
    import json
    from dataclasses import dataclass

    from mpqlab.experiments.cli import ResumableResult

    @dataclass
    class Settings:
        steps: int = 2
        seeds: tuple = (0, 1)

    out = tmp_path / "r.json"
    first = ResumableResult(Settings(), out, {"settings": {"steps": 2, "seeds": [0, 1]}})
    first.result["runs"].append({"seed": 0})
    first.save()
    saved = json.loads(out.read_text())
    assert saved["runs"] == [{"seed": 0}] and not saved["complete"] and saved["cpu_seconds"] >= 0

    again = ResumableResult(Settings(), out, {"settings": {"steps": 2, "seeds": [0, 1]}})
    assert again.result["runs"] == [{"seed": 0}]  # a stopped run continues
    again.result["runs"].append({"seed": 1})
    done = again.finish()
    assert done["complete"] and done["timestamp"] and done["seconds"] >= saved["seconds"]
    assert json.loads(out.read_text()) == done

    other = ResumableResult(Settings(steps=3), out, {"settings": {"steps": 3, "seeds": [0, 1]}})
    assert other.result["runs"] == [] and other.saved == {}  # other settings: start afresh
    assert ResumableResult(Settings(), None, {}).result == {"complete": False, "runs": []}


@pytest.mark.parametrize("script", ["binary", "dw_pw_sensitivity", "log_ptq", "outlier_backprop", "outlier_ptq",
                                    "precision_highway", "ptq_calibration", "profit", "qat_sweep", "two_bit",
                                    "weighted_entropy"])
def test_result_header_matches_the_shipped_file(script):
    # the shared header must write exactly the fields (and settings) of the committed result, so that a rerun
    # with default settings resumes that file instead of starting afresh
    import importlib
    import json

    from mpqlab.experiments.cli import result_header

    module = importlib.import_module(f"mpqlab.experiments.{script}")
    shipped = json.loads(module.RESULTS.read_text())
    header = json.loads(json.dumps(result_header(script, module.Settings())))
    assert header["script"] == shipped["script"] and header["seeds"] == shipped["seeds"]
    assert header["settings"] == shipped["settings"]
    assert set(header) - {"torch"} <= set(shipped)
