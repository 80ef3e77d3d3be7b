"""The GPU suite's quick run on the CPU: every figure in the JSON, finite and positive, and printed as measured."""
import json
import math

import pytest

from bench import gpu_suite


def printed_values(lines, label):
    """The numbers after `label` on the one printed line that starts with it ('-' for none)."""
    matches = [line for line in lines if line.startswith(label)]
    assert len(matches) == 1, (label, matches)
    return [None if word == "-" else float(word) for word in matches[0][len(label):].split()]


def assert_rate(value):
    assert isinstance(value, float) and math.isfinite(value) and value > 0, value


def assert_printed(lines, label, values):
    printed = printed_values(lines, label)
    assert len(printed) == len(values), (label, printed)
    for shown, value in zip(printed, values):
        assert (shown is None) == (value is None), (label, shown, value)
        assert shown is None or abs(shown - value) <= 5e-4 + 1e-9 * abs(value), (label, shown, value)


def test_quick_run_on_cpu_measures_and_prints_every_part(tmp_path, capsys):
    gpu_suite.main(["--quick", "--device", "cpu", "--output", str(tmp_path / "gpu.json")])
    lines = capsys.readouterr().out.splitlines()
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["device"] == "cpu" and results["torch"] and results["epoch_patches"] == 2_700_000
    parts = results["train"]
    assert [p["batch_size"] for p in parts] == [8, 16]
    for part in parts:
        for value in (part["step"]["samples_per_s"], part["step"]["images_per_s"], part["bare"]["images_per_s"],
                      part["step_over_bare"], part["epoch_hours"]):
            assert_rate(value)
        assert part["step"]["images_per_sample"] == 3  # weak + strong through the student, weak through the teacher
        assert part["epoch_hours"] * 3600 * part["step"]["samples_per_s"] == pytest.approx(2_700_000)
        assert part["step"]["peak_memory_mb"] is None and part["bare"]["peak_memory_mb"] is None
        assert set(part["loader"]) == {"memory", "mmap", "on_demand"}
        for loader in part["loader"].values():
            assert_rate(loader["samples_per_s"])
            assert abs(loader["over_step"] - loader["samples_per_s"] / part["step"]["samples_per_s"]) < 1e-6
    rows = dict(gpu_suite.train_rows(parts))
    assert set(rows) == {"full step, samples/s", "full step, images/s through the network",
                         "bare fwd+bwd same shape, images/s", "step / bare, images/s", "peak GPU MB, full step",
                         "peak GPU MB, bare", "one epoch of 2.7M patches, hours",
                         *(f"loader {mode}, samples/s" for mode in ("memory", "mmap", "on_demand")),
                         *(f"loader {mode} / step consumption" for mode in ("memory", "mmap", "on_demand"))}
    for label, values in rows.items():
        assert_printed(lines, label, values)
    assert rows["full step, samples/s"] == [p["step"]["samples_per_s"] for p in parts]
    assert rows["step / bare, images/s"] == [p["step_over_bare"] for p in parts]
    assert set(results["pick"]) == {"resnet_tiny", "resnet18"}
    for backbone, pick in results["pick"].items():
        assert_rate(pick["micrographs_per_s"])
        assert_rate(pick["pick_only_micrographs_per_s"])
        assert pick["pick_only_micrographs_per_s"] >= pick["micrographs_per_s"] and pick["peak_memory_mb"] is None
        label = f"pick {backbone} at 32 px, stride {pick['stride']}"
        assert_printed(lines, label + (", bf16" if pick["bf16"] else ""),
                       [pick[key] for key in gpu_suite.PICK_COLUMNS.values()])
    assert results["disk_mb"] > 0 and lines[0].startswith("gpu_suite on cpu")
    assert any(line.strip().startswith("disk: about") for line in lines[:6])
