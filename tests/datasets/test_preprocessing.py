"""Preprocessing: both preprocessors, the launcher, resume, workers, shards, bad input, real data."""
import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree

import preprocess_chunked
import preprocess_coco_full_dataset
import run_chunked_preprocessing
from common import files
from common.errors import InputError
from datasets.chunks import writer as chunk_writer
from datasets.io.coordinates import make_particles, read_coco, write_coco, write_cryoppp_csv
from datasets.preprocessing import workers
from datasets.preprocessing.workers import ordered_results
from datasets.sampling.coco_pu import offcentre_negatives

SIZE, DIAMETER = 256, 24


def _micrograph(rng, centres):
    """A noisy 256 px micrograph with a dark disc-like blob at each particle centre."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = rng.normal(128, 12, (SIZE, SIZE))
    for x, y in centres:
        image -= 60 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (DIAMETER / 4) ** 2))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_tiny_dataset(root, n_train=4, n_val=1, n_test=1, seed=0, truth=False):
    """CryoTransformer layout with PNG micrographs, COCO annotations and (optionally) ground_truth/."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        (root / split).mkdir(parents=True)
        table, images = {}, {}
        for i in range(count):
            stem = f"{split}_mic{i:02d}"
            grid = np.stack(np.meshgrid(np.arange(30, 230, 40), np.arange(30, 230, 40)), -1).reshape(-1, 2)
            centres = grid[rng.random(len(grid)) < 0.5] + rng.integers(-4, 5, (1, 2))
            Image.fromarray(_micrograph(rng, centres)).save(root / split / f"{stem}.png")
            particles = make_particles(centres[:, 0], centres[:, 1], DIAMETER)
            images[stem] = {"file_name": f"{stem}.png", "width": SIZE, "height": SIZE, "id": i}
            labeled = particles[rng.random(len(particles)) < 0.7] if (truth and split == "train") else particles
            table[stem] = labeled
            if truth:
                (root / "ground_truth").mkdir(exist_ok=True)
                write_cryoppp_csv(root / "ground_truth" / f"{stem}.csv", particles)
        (root / "annotations").mkdir(exist_ok=True)
        write_coco(root / "annotations" / f"instances_{split}.json", table, images)
    return root


def coco_args(root, out, *extra):
    """The research split (30% of the annotations hidden, pi counted); partial-labels tests add --labels partial."""
    return ["--data-root", str(root), "--output-dir", str(out), "--patch-size", "32", "--target-diameter", "16",
            "--chunk-size", "40", "--labels", "complete", "--hide-ratio", "0.3", *extra]


def sliding_args(root, out, *extra):
    return ["--data-root", str(root), "--output-dir", str(out), "--patch-size", "32", "--stride", "16",
            "--target-diameter", "16", "--chunk-size", "100", "--ratio", "0.5", *extra]


def load_split(out, split):
    meta = json.loads((Path(out) / "metadata.json").read_text())
    chunks = [torch.load(Path(out) / c["file"], weights_only=True) for c in meta["splits"][split]["chunks"]]
    return meta, {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def chunk_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*_chunk_*.pt"))}


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_dataset(tmp_path / "data")


# ---------------------------------------------------------------- COCO PU split
def test_coco_counts_priors_and_positions(tiny, tmp_path):
    out = tmp_path / "out"  # random windows (on by default) are tested on their own below
    summary = preprocess_coco_full_dataset.main(coco_args(tiny, out, "--random-per-pos", "0"))
    meta, train = load_split(out, "train")
    table, _ = read_coco(tiny / "annotations" / "instances_train.json")
    n_particles = sum(len(v) for v in table.values())
    types = train["sample_type"].numpy()
    labeled, hidden, background = (types == 0).sum(), (types == 1).sum(), (types == 2).sum()
    assert labeled + hidden == n_particles
    assert hidden == sum(int(len(v) * 0.3) for v in table.values())
    assert meta["priors"]["prior_unlabeled"] == pytest.approx(hidden / (hidden + background))
    assert meta["priors"]["positive_fraction"] == pytest.approx((labeled + hidden) / len(types))
    assert summary["splits"]["train"]["count"] == len(types) and meta["complete"]
    assert train["patches"].dtype == torch.uint8 and tuple(train["patches"].shape[1:]) == (32, 32)
    # every positive patch is centred on an annotated particle (original pixels, within rounding)
    centres = {stem: v[:, :2] for stem, v in table.items()}
    stems = [m["stem"] for m in meta["micrographs"]]
    for xy, mic, t in zip(train["xy"].numpy(), train["micrograph"].numpy(), types):
        d, _ = cKDTree(centres[stems[mic]]).query(xy)
        if t in (0, 1):
            assert d <= 1.5
        elif t == 2:  # far negatives >= 1.5 diameters from every particle (2 px of rounding)
            assert d >= 1.5 * DIAMETER - 2.0
    n_offcentre = (types == 3).sum()  # by default the off-centre windows are known negatives (tested below)
    assert n_offcentre == sum(m["offcentre_found"] for m in meta["micrographs"] if m["split"] == "train") > 0
    assert meta["priors"]["offcentre_per_pos_achieved"] == pytest.approx(n_offcentre / n_particles)
    # the patch centre pixel is dark (a particle) for positives, on average
    centre = train["patches"][:, 16, 16].float()
    assert centre[torch.from_numpy(types == 0)].mean() < centre[torch.from_numpy(types == 2)].mean() - 20


def test_coco_truth_marks_unannotated_particles_and_val_keeps_true_labels(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", truth=True)
    out = tmp_path / "out"
    preprocess_coco_full_dataset.main(coco_args(root, out))
    _, val = load_split(out, "val")
    assert set(val["label"].tolist()) <= {0, 1}
    assert torch.equal(val["label"].long(), val["true_label"].long())
    _, train = load_split(out, "train")
    hidden = train["sample_type"] == 1
    assert torch.all(train["true_label"][hidden] == 1) and torch.all(train["label"][hidden] == 0)


def test_known_negatives_become_label_minus_one(tiny, tmp_path):
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    write_cryoppp_csv(rejected / "train_mic00.csv", make_particles([100.0, 150.0], [20.0, 200.0], DIAMETER))
    out = tmp_path / "out"
    preprocess_coco_full_dataset.main(coco_args(tiny, out, "--known-negatives", str(rejected),
                                                "--offcentre-label", "unlabeled"))
    meta, train = load_split(out, "train")
    known = train["label"] == -1
    assert known.sum() == 2 and torch.all(train["sample_type"][known] == 3)
    assert meta["splits"]["train"]["counts"]["known_negative"] == 2


def test_dense_micrographs_record_achieved_negative_ratio(tiny, tmp_path):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="too dense"):
        summary = preprocess_coco_full_dataset.main(coco_args(tiny, out, "--neg-per-pos", "50"))
    priors = summary["priors"]
    assert priors["negatives_short"] > 0 and priors["neg_per_pos_achieved"] < 50


def test_offcentre_negatives_sit_beside_particles_and_on_none():
    rng = np.random.default_rng(3)
    particles = rng.uniform(100, 900, (60, 2))
    centres = offcentre_negatives(particles, rng, count=60, diameter=40, distance=(0.5, 1.0), height=1000,
                                  width=1000)
    assert centres.shape == (60, 2) and centres.dtype == np.int64
    distance, _ = cKDTree(particles).query(centres)
    assert distance.min() >= 0.5 * 40 - 1e-6 and distance.max() <= 1.0 * 40 + 1.0
    crowded = np.stack(np.meshgrid(np.arange(0, 200, 10), np.arange(0, 200, 10)), -1).reshape(-1, 2)
    assert len(offcentre_negatives(crowded.astype(float), rng, count=50, diameter=40, distance=(0.5, 1.0),
                                   height=200, width=200)) == 0  # no free place: none, not a wrong one


def test_offcentre_unlabeled_joins_the_unlabeled_set_beside_any_particle(tiny, tmp_path):
    out = tmp_path / "out"
    preprocess_coco_full_dataset.main(coco_args(tiny, out, "--offcentre-label", "unlabeled", "--random-per-pos", "0"))
    meta, train = load_split(out, "train")
    table, _ = read_coco(tiny / "annotations" / "instances_train.json")
    stems = [m["stem"] for m in meta["micrographs"]]
    types = train["sample_type"].numpy()
    assert not (types == 3).any()
    n_offcentre = 0
    for xy, mic in zip(train["xy"].numpy()[types == 2], train["micrograph"].numpy()[types == 2]):
        d = cKDTree(table[stems[mic]][:, :2]).query(xy)[0]  # far (>= 1.5 D) or off-centre (0.5-1.0 D) of any
        offcentre = 0.5 * DIAMETER - 2.0 <= d <= 1.0 * DIAMETER + 2.0
        assert d >= 1.5 * DIAMETER - 2.0 or offcentre
        n_offcentre += offcentre
    assert n_offcentre == sum(m["offcentre_found"] for m in meta["micrographs"] if m["split"] == "train") > 0


def test_offcentre_off_gives_only_far_negatives_and_bad_range_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    summary = preprocess_coco_full_dataset.main(
        coco_args(tiny, out, "--offcentre-per-pos", "0", "--random-per-pos", "0"))
    meta, train = load_split(out, "train")
    assert summary["priors"]["offcentre_per_pos_achieved"] == 0
    table, _ = read_coco(tiny / "annotations" / "instances_train.json")
    stems = [m["stem"] for m in meta["micrographs"]]
    background = train["sample_type"].numpy() == 2
    for xy, mic in zip(train["xy"].numpy()[background], train["micrograph"].numpy()[background]):
        assert cKDTree(table[stems[mic]][:, :2]).query(xy)[0] >= 1.5 * DIAMETER - 2.0
    with pytest.raises(SystemExit):
        preprocess_coco_full_dataset.main(coco_args(tiny, tmp_path / "bad", "--offcentre-distance", "1.0", "0.5"))
    assert "--offcentre-distance 1.0 0.5 must satisfy 0 < LOW < HIGH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess_coco_full_dataset.main(coco_args(tiny, tmp_path / "bad", "--set",
                                                    "preprocessing.offcentre_label=maybe"))
    assert "offcentre_label 'maybe' is not one of unlabeled, known_negative" in capsys.readouterr().err


def test_offcentre_known_negatives_lie_beside_labeled_particles(tiny, tmp_path):
    out = tmp_path / "out"
    summary = preprocess_coco_full_dataset.main(coco_args(tiny, out))  # the default
    meta, train = load_split(out, "train")
    table, _ = read_coco(tiny / "annotations" / "instances_train.json")
    stems = [m["stem"] for m in meta["micrographs"]]
    types, labels, truth = (train[k].numpy() for k in ("sample_type", "label", "true_label"))
    known = types == 3
    assert known.sum() == sum(m["offcentre_found"] for m in meta["micrographs"] if m["split"] == "train") > 0
    assert np.all(labels[known] == -1)
    for xy, mic, t in zip(train["xy"].numpy()[known], train["micrograph"].numpy()[known], truth[known]):
        is_mic = train["micrograph"].numpy() == mic
        labeled = train["xy"].numpy()[is_mic & (types == 0)]
        d_labeled = cKDTree(labeled).query(xy)[0]  # placed beside a labeled particle, on none of them
        assert 0.5 * DIAMETER - 2.0 <= d_labeled <= 1.0 * DIAMETER + 2.0
        d_any = cKDTree(table[stems[mic]][:, :2]).query(xy)[0]  # may land on a hidden one: marked true positive
        assert t == int(d_any < 0.5 * DIAMETER)
    hidden, background = (types == 1).sum(), (types == 2).sum()  # pi counts the unlabeled set only
    assert summary["priors"]["prior_unlabeled"] == pytest.approx(hidden / (hidden + background))
    _, val = load_split(out, "val")
    assert not (val["label"] == -1).any()  # val/test keep true labels: off-centre windows are plain negatives


def test_random_windows_join_the_unlabeled_set_and_pi_counts_the_centred_ones(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    summary = preprocess_coco_full_dataset.main(
        coco_args(tiny, out, "--random-per-pos", "10", "--centre-radius", "0.4"))
    baseline = preprocess_coco_full_dataset.main(coco_args(tiny, tmp_path / "none", "--random-per-pos", "0"))
    table, _ = read_coco(tiny / "annotations" / "instances_train.json")
    for split in ("train", "val"):
        meta, data = load_split(out, split)
        _, before = load_split(tmp_path / "none", split)
        added_rows = []
        for mic in np.unique(before["micrograph"].numpy()):  # each micrograph's other samples are unchanged
            rows, rows_before = (np.flatnonzero(d["micrograph"].numpy() == mic) for d in (data, before))
            assert torch.equal(data["patches"][rows[:len(rows_before)]], before["patches"][rows_before])
            added_rows.append(rows[len(rows_before):])
        added = {k: v[np.concatenate(added_rows)].numpy() for k, v in data.items()}
        truth_table = table if split == "train" else read_coco(tiny / "annotations" / f"instances_{split}.json")[0]
        rows = [m for m in meta["micrographs"] if m["split"] == split]
        assert len(added["label"]) == sum(m["random_windows"] for m in rows) == sum(10 * m["n_particles"] for m in rows)
        stems = [m["stem"] for m in meta["micrographs"]]
        distance = np.array([cKDTree(truth_table[stems[mic]][:, :2]).query(xy)[0]
                             for xy, mic in zip(added["xy"], added["micrograph"])])
        centred = added["true_label"] == 1
        clear = np.abs(distance - 0.4 * DIAMETER) > 1.0  # away from the radius, where rounding cannot decide
        assert np.array_equal(centred[clear], distance[clear] < 0.4 * DIAMETER) and centred.any()
        if split == "train":
            assert np.all(added["label"] == 0)
            assert np.array_equal(added["sample_type"] == 1, centred) and np.all(added["sample_type"][~centred] == 2)
        else:
            assert np.array_equal(added["label"] == 1, centred)
    counts = summary["splits"]["train"]
    assert summary["priors"]["prior_unlabeled"] == pytest.approx(
        counts["hidden_positive"] / (counts["hidden_positive"] + counts["background"]))
    assert summary["priors"]["prior_unlabeled"] < baseline["priors"]["prior_unlabeled"]
    for flag, value, message in (("--random-per-pos", "-1", "must not be negative"),
                                 ("--centre-radius", "0.6", "--centre-radius 0.6 must lie in (0, 0.5)")):
        with pytest.raises(SystemExit):
            preprocess_coco_full_dataset.main(coco_args(tiny, tmp_path / "bad", flag, value))
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- sliding windows
def test_sliding_windows_counts_radius_and_ratio(tiny, tmp_path):
    out = tmp_path / "out"
    preprocess_chunked.main(sliding_args(tiny, out, "--ratio", "1.0"))
    meta, train = load_split(out, "train")
    scale = meta["facts"]["scale"]
    windows_per_side = (round(SIZE * scale) - 32) // 16 + 1
    assert len(train["label"]) == 4 * windows_per_side ** 2  # ratio 1.0 keeps every window
    table, _ = read_coco(tiny / "annotations" / "instances_train.json")
    stems = [m["stem"] for m in meta["micrographs"]]
    radius = 0.5 * DIAMETER
    for xy, mic, label in zip(train["xy"].numpy(), train["micrograph"].numpy(), train["label"].numpy()):
        d, _ = cKDTree(table[stems[mic]][:, :2]).query(xy)
        assert (d <= radius + 1.5) if label == 1 else (d >= radius - 1.5)
    half = tmp_path / "half"
    preprocess_chunked.main(sliding_args(tiny, half, "--ratio", "0.5"))
    _, train_half = load_split(half, "train")
    positives = int((train["label"] == 1).sum())
    assert int((train_half["label"] == 1).sum()) == positives
    assert abs(int((train_half["label"] == 0).sum()) - 0.5 * (len(train["label"]) - positives)) <= 4


def test_sliding_prior_from_expected_particles(tiny, tmp_path):
    out = tmp_path / "out"
    summary = preprocess_chunked.main(sliding_args(tiny, out, "--expected-particles", "30"))
    priors = summary["priors"]
    assert priors["method"] == "expected_particles"
    assert priors["prior_unlabeled"] == pytest.approx(
        priors["positives_in_unlabeled"] / priors["unlabeled"])
    meta = json.loads((out / "metadata.json").read_text())
    k = np.pi * (0.5 * 16) ** 2 / 16 ** 2
    expected = sum(min(m["unlabeled_windows"], max(30 - m["n_labeled"], 0) * k)
                   for m in meta["micrographs"] if m["split"] == "train")
    assert priors["positives_in_unlabeled"] == pytest.approx(expected)
    _, train = load_split(out, "train")
    unl = train["label"] == 0
    assert torch.all(train["sample_type"][unl] == 4) and torch.all(train["true_label"][unl] == -1)


@pytest.mark.slow
def test_launcher_gives_each_ratio_its_own_dir(tiny, tmp_path, capsys):
    run_chunked_preprocessing.main(["--ratio", "0.1", "--data-root", str(tiny), "--output-root",
                                    str(tmp_path / "chunks"), "--", "--patch-size", "32", "--stride", "16"])
    assert (tmp_path / "chunks" / "ratio_0.1" / "metadata.json").is_file()
    assert "Measured size for ratio 0.1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_chunked_preprocessing.main(["--ratio", "0.7", "--data-root", str(tiny)])


# ---------------------------------------------------------------- resume, workers, shards
def _fail_after(monkeypatch, n_chunks, error):
    real = chunk_writer.ChunkStore.write_chunk
    calls = {"n": 0}

    def flaky(self, split, samples, cursor):
        calls["n"] += 1
        if calls["n"] > n_chunks:
            raise error
        return real(self, split, samples, cursor)
    monkeypatch.setattr(chunk_writer.ChunkStore, "write_chunk", flaky)


@pytest.mark.parametrize("tool,args", [(preprocess_coco_full_dataset, coco_args),
                                       (preprocess_chunked, sliding_args)])
def test_resume_after_interruption_is_byte_identical(tiny, tmp_path, monkeypatch, tool, args):
    reference = tmp_path / "reference"
    tool.main(args(tiny, reference))
    out = tmp_path / "out"
    _fail_after(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        tool.main(args(tiny, out))
    meta = json.loads((out / "metadata.json").read_text())
    assert not meta["complete"] and len(chunk_bytes(out)) == 3
    monkeypatch.undo()
    tool.main(args(tiny, out))
    assert chunk_bytes(out) == chunk_bytes(reference)
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("failure", ["enospc", "torch_runtime_error"])
def test_disk_full_keeps_earlier_chunks_and_resumes(tiny, tmp_path, monkeypatch, capsys, failure):
    reference = tmp_path / "reference"
    preprocess_coco_full_dataset.main(coco_args(tiny, reference))
    out = tmp_path / "out"
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(path).write_bytes(b"partial")
            if failure == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(torch, "save", full_disk)
    if failure == "torch_runtime_error":  # what torch.save raises on a full disk; free space tells why
        real_usage = files.shutil.disk_usage
        monkeypatch.setattr(files.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=0))
    with pytest.raises(SystemExit) as exit_info:
        preprocess_coco_full_dataset.main(coco_args(tiny, out))
    assert exit_info.value.code == 2
    assert "disk full" in capsys.readouterr().err
    assert len(chunk_bytes(out)) == 2 and not list(out.glob("*.tmp"))
    meta = json.loads((out / "metadata.json").read_text())
    assert len(meta["splits"]["train"]["chunks"]) == 2
    monkeypatch.undo()
    preprocess_coco_full_dataset.main(coco_args(tiny, out))
    assert chunk_bytes(out) == chunk_bytes(reference)


def _micrograph_result(index):
    return {"samples": {"patches": np.full((3, 4, 4), index, np.uint8), "label": np.arange(3, dtype=np.int8),
                        "xy": np.full((3, 2), index / 2), "empty": np.zeros((0, 4, 4), np.uint8)},
            "info": {"index": index}}


class _SharedMemoryFull:
    def __reduce__(self):
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device")


def _shared_memory_full_result(index):
    return {"samples": {"patches": np.zeros((2, 2), np.uint8)}, "info": _SharedMemoryFull()}


def _unsendable_result(index):
    return {"samples": {"patches": np.zeros((2, 2), np.uint8)}, "info": lambda: index}


def _check_results(results):
    assert [r["info"]["index"] for r in results] == list(range(7))
    for i, r in enumerate(results):
        samples = r["samples"]
        assert all(isinstance(v, np.ndarray) for v in samples.values())
        dtypes = [samples[k].dtype for k in ("patches", "label", "xy", "empty")]
        assert dtypes == [np.uint8, np.int8, np.float64, np.uint8]
        assert int(samples["patches"].sum()) == 48 * i and samples["xy"][0, 0] == i / 2
        assert samples["empty"].shape == (0, 4, 4)


def test_worker_results_come_back_in_shared_memory_as_numpy_in_order():
    results = list(ordered_results(_micrograph_result, range(7), num_workers=2))
    _check_results(results)
    patches = results[0]["samples"]["patches"]
    assert isinstance(patches.base, torch.Tensor) and patches.base.is_shared()


def test_worker_results_take_the_pipe_when_shared_memory_is_short(monkeypatch):
    monkeypatch.setattr(workers, "shared_memory_free", lambda: 0)
    results = list(ordered_results(_micrograph_result, range(7), num_workers=2))
    _check_results(results)
    assert not isinstance(results[0]["samples"]["patches"].base, torch.Tensor)


def test_shared_memory_running_out_during_the_handover_says_how_to_fix_it():
    with pytest.raises(InputError, match=r"/dev/shm.*--num-workers 1.*--shm-size"):
        list(ordered_results(_shared_memory_full_result, range(3), num_workers=2))


def test_other_unsendable_results_are_not_blamed_on_shared_memory():
    with pytest.raises(RuntimeError, match="could not reach the main process") as error:
        list(ordered_results(_unsendable_result, range(3), num_workers=2))
    assert not isinstance(error.value, InputError)


def test_worker_count_and_shards_do_not_change_the_patches(tiny, tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    preprocess_coco_full_dataset.main(coco_args(tiny, one))
    preprocess_coco_full_dataset.main(coco_args(tiny, two, "--num-workers", "2"))
    assert chunk_bytes(one) == chunk_bytes(two)

    def patch_set(out_dirs, split):
        rows = set()
        for out in out_dirs:
            meta, data = load_split(out, split)
            stems = [m["stem"] for m in meta["micrographs"]]
            for i in range(len(data["label"])):
                rows.add((stems[data["micrograph"][i]], tuple(data["xy"][i].tolist()), int(data["label"][i]),
                          data["patches"][i].numpy().tobytes()))
        return rows
    shards = tmp_path / "sharded"
    for i in range(3):
        preprocess_coco_full_dataset.main(coco_args(tiny, shards, "--shard", f"{i}/3"))
    shard_dirs = sorted(shards.glob("shard-*-of-3"))
    assert len(shard_dirs) == 3
    assert patch_set(shard_dirs, "train") == patch_set([one], "train")


# ---------------------------------------------------------------- bad input
def _error(capsys, tool, argv):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the last line; tqdm may write above it
    assert err.startswith("error: ")
    return err


def test_missing_root_and_split_folder(tmp_path, capsys):
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tmp_path / "nowhere", tmp_path / "o"))
    assert "nowhere" in err
    (tmp_path / "root" / "val").mkdir(parents=True)
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tmp_path / "root", tmp_path / "o"))
    assert "train" in err


def test_unreadable_micrograph_skipped_or_strict(tiny, tmp_path, capsys):
    (tiny / "train" / "train_mic01.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="train_mic01"):
        summary = preprocess_coco_full_dataset.main(coco_args(tiny, tmp_path / "out"))
    assert summary["skipped_micrographs"] == 1
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tiny, tmp_path / "strict", "--strict"))
    assert "train_mic01" in err


def test_particles_outside_and_missing_images(tiny, tmp_path):
    table, images = read_coco(tiny / "annotations" / "instances_train.json")
    table["train_mic00"] = np.vstack([table["train_mic00"], make_particles([500.0, -3.0], [10.0, 10.0], DIAMETER)])
    images["ghost"] = {"file_name": "ghost.png", "width": SIZE, "height": SIZE, "id": 99}
    table["ghost"] = make_particles([50.0], [50.0], DIAMETER)
    write_coco(tiny / "annotations" / "instances_train.json", table, images)
    with pytest.warns(UserWarning, match="ghost"):
        summary = preprocess_coco_full_dataset.main(coco_args(tiny, tmp_path / "out"))
    assert summary["dropped_particles"] == 2


def test_empty_annotation_file_and_unknown_config_key(tiny, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("preprocessing:\n  hide_ratoi: 0.2\n")
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tiny, tmp_path / "o", "--config", str(config)))
    assert "hide_ratoi" in err
    err = _error(capsys, preprocess_chunked, sliding_args(tiny, tmp_path / "o", "--set", "preprocessing.strid=3"))
    assert "preprocessing.strid" in err
    (tiny / "annotations" / "instances_train.json").write_text("")
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tiny, tmp_path / "o2"))
    assert "instances_train.json" in err


def test_output_dir_guards_and_config_change(tiny, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "my_notes.txt").write_text("precious")
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tiny, foreign))
    assert "my_notes.txt" in err
    out = tmp_path / "out"
    preprocess_coco_full_dataset.main(coco_args(tiny, out))
    err = _error(capsys, preprocess_chunked, sliding_args(tiny, out))
    assert "preprocess_coco_full_dataset" in err
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tiny, out, "--hide-ratio", "0.5"))
    assert "hide_ratio" in err and "--no-resume" in err
    (out / "keep_me.txt").write_text("mine")
    (out / "train_chunk_0042.pt").write_bytes(b"a file named like ours that no metadata lists")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = _error(capsys, preprocess_coco_full_dataset, coco_args(tiny, out, "--hide-ratio", "0.5", "--no-resume"))
    assert "did not write (e.g. keep_me.txt)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # --no-resume deleted nothing
    (out / "keep_me.txt").unlink()
    (out / "train_chunk_0042.pt").unlink()
    preprocess_coco_full_dataset.main(coco_args(tiny, out, "--hide-ratio", "0.5", "--no-resume"))
    assert json.loads((out / "metadata.json").read_text())["config"]["hide_ratio"] == 0.5


# ---------------------------------------------------------------- the real data
@pytest.mark.slow
def test_both_preprocessors_on_empiar10017(empiar10017, tmp_path):
    out = tmp_path / "coco"
    summary = preprocess_coco_full_dataset.main(["--data-root", str(empiar10017), "--output-dir", str(out),
                                                 "--num-workers", "2", "--labels", "complete", "--hide-ratio", "0.3"])
    meta, test = load_split(out, "test")
    random_windows = {split: sum(m["random_windows"] for m in meta["micrographs"] if m["split"] == split)
                      for split in ("train", "test")}
    assert random_windows == {"train": 2 * 7774, "test": 2 * 3131}  # two per particle by default
    particles = 0  # every test particle is a positive: each micrograph's samples open with its particles
    for index, row in enumerate(meta["micrographs"]):
        if row["split"] == "test":
            assert bool((test["sample_type"][test["micrograph"] == index][:row["n_particles"]] == 0).all())
            particles += row["n_particles"]
    assert particles == 3131
    train = summary["splits"]["train"]
    assert train["labeled_positive"] == 7774 - sum(int(0.3 * m["n_particles"]) for m in meta["micrographs"]
                                                   if m["split"] == "train") == 5448
    assert summary["priors"]["prior_unlabeled"] == pytest.approx(
        train["hidden_positive"] / (train["hidden_positive"] + train["background"]))
    assert meta["facts"]["scale"] == pytest.approx(64 / 108) and meta["facts"]["particle_diameter_px"] == 108
    sliding = tmp_path / "sliding"
    summary = preprocess_chunked.main(["--data-root", str(empiar10017), "--output-dir", str(sliding),
                                       "--ratio", "0.1", "--expected-particles", "640", "--num-workers", "2"])
    assert 0 < summary["priors"]["prior_unlabeled"] < 1
    assert summary["splits"]["test"]["labeled_positive"] > 3131 * 0.5



@pytest.mark.parametrize("flag, value", [("--chunk-size", "0"), ("--patch-size", "-5"), ("--target-diameter", "0")])
def test_sizes_that_cannot_work_are_refused_before_anything_is_written(tiny, tmp_path, capsys, flag, value):
    for tool, args in ((preprocess_coco_full_dataset, coco_args), (preprocess_chunked, sliding_args)):
        err = _error(capsys, tool, args(tiny, tmp_path / "out", flag, value))
        assert f"must be positive ({flag})" in err
        assert not (tmp_path / "out").exists()
