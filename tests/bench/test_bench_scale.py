"""The scale benchmark: copies keep their particles where the image has them, the quick run measures every
part, and a disk too small is refused before anything is written."""
import json

import numpy as np
import pytest

from bench import bench_scale


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_copies_move_labels_with_the_image(turns, flip):
    image = np.zeros((30, 50), dtype=np.float32)
    xy = np.array([[3, 4], [49, 0], [10, 29], [25, 17]])
    image[xy[:, 1], xy[:, 0]] = np.arange(1, 5)
    moved, moved_xy = bench_scale.transform(image, xy, turns, flip)
    assert moved.shape == ((30, 50) if turns % 2 == 0 else (50, 30))
    assert moved[moved_xy[:, 1], moved_xy[:, 0]].tolist() == [1, 2, 3, 4]
    assert np.count_nonzero(moved) == 4


@pytest.mark.slow
def test_quick_run_measures_every_part(tmp_path, capsys):
    summary = bench_scale.main(["--output-dir", str(tmp_path), "--quick"])
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "scale.json").read_text()) == json.loads(json.dumps(summary))
    assert sorted(summary["sizes"]) == [4, 8] and out.index("needs ") < out.index("pool of 8 micrographs")
    for n, row in summary["sizes"].items():
        for tool in bench_scale.TOOLS:
            figures = row[tool]
            assert figures["micrographs"] == n and figures["patches"] > 0 and figures["chunks"] == 3
            assert figures["seconds"] > 0 and figures["peak_rss_mb"] > 100 and figures["metadata_rewrite_s"] > 0
        assert row["resume"]["complete"] is True and row["resume"]["killed_at"] >= 0.9 * n
    modes = {m["mode"]: m for m in summary["loading"]["modes"]}
    assert set(modes) == {"memory", "mmap", "on_demand"}
    for result in modes.values():
        assert result["samples"] == result["of"] > 0 and result["samples_per_s"] > 0  # a whole pass
        assert 1 <= result["chunks_per_batch"] and 1 <= result["micrographs_per_batch"] <= 8
    assert summary["loading"]["training"]["steps"] == 3 and summary["loading"]["training"]["epoch_s"] > 0
    assert not list(tmp_path.glob("chunks_4_*")) and (tmp_path / "chunks_8_sliding" / "metadata.json").is_file()


def test_a_disk_too_small_is_refused_before_the_pool_is_built(tmp_path, monkeypatch, capsys):
    real = bench_scale.shutil.disk_usage
    monkeypatch.setattr(bench_scale.shutil, "disk_usage", lambda path: real(path)._replace(free=10 << 20))
    with pytest.raises(SystemExit) as exit_info:
        bench_scale.main(["--output-dir", str(tmp_path), "--quick", "--sizes", "4", "400"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needed for --sizes 4 400, only 10.0 MB free" in err and "smaller --sizes" in err
    assert len(list((tmp_path / "micrographs").glob("*.mrc"))) == 4  # only the pilot's
