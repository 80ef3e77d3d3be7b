"""Every row of the bad-input table (docs/troubleshooting.md, linked from the README), run through the tool a
user would run: exit status 2 and one line that names the problem, and nothing written where the tool refused
to start."""
import json
import re
from contextlib import nullcontext

import pytest
import torch

import evaluate_picks
import make_synthetic_dataset
import pick_particles
import preprocess_chunked
import preprocess_coco_full_dataset
import threshold_picks
import train_pu_fixed_full
from common.files import folder_lock
from conftest import REPO, write_malicious_checkpoint

COCO, SLIDING, TRAIN, PICK = (preprocess_coco_full_dataset.main, preprocess_chunked.main, train_pu_fixed_full.main,
                              pick_particles.main)


def copy_chunks(world, tmp):
    out = tmp / "chunks"
    out.mkdir()
    for path in (world.root / "chunks").iterdir():
        if path.name != ".lock":
            (out / path.name).write_bytes(path.read_bytes())
    return out


def changed_chunk(world, tmp, name, tail):
    """A copy of the world's chunks with chunk `name` deleted (tail None) or its last bytes replaced by `tail`."""
    chunks = copy_chunks(world, tmp)
    if tail is None:
        (chunks / name).unlink()
    else:
        (chunks / name).write_bytes((chunks / name).read_bytes()[:-len(tail)] + tail)
    return chunks


def edit_metadata(folder, change):
    meta = json.loads((folder / "metadata.json").read_text())
    change(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def coco(world, tmp, *extra, data=None):
    return COCO, world.preprocess_args(tmp / "out", data) + list(extra)


def sliding(world, tmp, *extra):
    return SLIDING, world.preprocess_args(tmp / "out", research_split=False) + ["--stride", "32", *extra]


def train(world, tmp, *extra, data_dir=None, exp="x"):
    return TRAIN, world.train_args(tmp / "runs", exp, data_dir, *extra)


def pick(world, tmp, *extra, micrographs=None, checkpoint=None, out=None):
    return PICK, world.pick_args(out or tmp / "picks", micrographs, checkpoint) + list(extra)


def checkpoint_at_pixel_size(world, path, pixel_size):
    """A copy of the world's checkpoint that says its training micrographs were at `pixel_size` Å/px."""
    state = torch.load(world.root / "runs" / "run" / "best.pt", weights_only=True)
    state["preprocessing"]["pixel_size_angstrom"] = pixel_size
    torch.save(state, path)
    return path


def run_from_before(world, tmp, key):
    """A copy of the world's run whose last.pt config lacks `key` (section.key), as a run trained before it."""
    run = tmp / "runs" / "run"
    run.mkdir(parents=True)
    for path in (world.root / "runs" / "run").iterdir():
        if path.is_file():
            (run / path.name).write_bytes(path.read_bytes())
    state = torch.load(run / "last.pt", weights_only=True)
    section, name = key.split(".")
    del state["config"][section][name]
    torch.save(state, run / "last.pt")
    return TRAIN, world.train_args(tmp / "runs", "run")


def empty_folder(tmp, name):
    (tmp / name).mkdir()
    return tmp / name


def data_copy(world, tmp, change):
    """A copy of the world's dataset folder (micrographs linked), then `change(copy)`."""
    copy = tmp / "data"
    for path in (world.root / "data").rglob("*"):
        target = copy / path.relative_to(world.root / "data")
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    change(copy)
    return copy


def with_file(folder, name):
    """`folder` (made) holding a small file `name` that no tool wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"not written by a tool\n" * 20)
    return folder


def malicious(tmp, name):
    return write_malicious_checkpoint(tmp / name, tmp / "code_ran")


def config_file(tmp, text):
    (tmp / "mine.yaml").write_text(text)
    return str(tmp / "mine.yaml")


def first_test_stem(world):
    return sorted((world.root / "data" / "test").iterdir())[0].stem


# id (the README row), how to build (tool, argv) from (world, tmp), what the one-line error must say
CASES = {
    "data root missing": (lambda w, t: coco(w, t, data=t / "nowhere"), r"data root .*nowhere not found"),
    "no micrographs in the data root": (lambda w, t: coco(w, t, data=empty_folder(t, "d")),
                                        r"no micrographs \(.mrc .jpg .png .tif\) in"),
    "split folders without train/": (lambda w, t: coco(w, t, data=data_copy(w, t, lambda d: (
        d / "train").rename(d / "training"))), r"has split folders .* but no train/"),
    "unreadable micrograph with --strict": (lambda w, t: coco(w, t, "--strict", data=data_copy(w, t, lambda d: next(
        (d / "train").iterdir()).write_bytes(b"broken" * 100))), r"cannot read micrograph .*--strict"),
    "annotation file empty": (lambda w, t: coco(w, t, data=data_copy(w, t, lambda d: (
        d / "annotations" / "instances_train.json").write_text(""))), r"instances_train.json"),
    "annotation file not JSON": (lambda w, t: coco(w, t, data=data_copy(w, t, lambda d: (
        d / "annotations" / "instances_train.json").write_text("{images: ["))), r"instances_train.json"),
    "--annotations path missing": (lambda w, t: coco(w, t, "--annotations", str(t / "labels.star")),
                                   r"coordinate file or folder .*labels.star not found"),
    "labels without a diameter": (lambda w, t: coco(w, t, "--annotations", str(t / "p.star"), data=data_copy(
        w, t, lambda d: (t / "p.star").write_text("data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n10 20\n"))),
        r"give no particle diameter .*--particle-diameter"),
    "both --particle-diameter and --particle-diameter-angstrom": (lambda w, t: coco(
        w, t, "--particle-diameter", "24", "--particle-diameter-angstrom", "36"), r"both given; pass one of them"),
    "--config file missing": (lambda w, t: coco(w, t, "--config", str(t / "none.yaml")),
                              r"config file .*none.yaml not found"),
    "--config file not YAML": (lambda w, t: coco(w, t, "--config", config_file(t, "preprocessing: [\n")),
                               r"mine.yaml is not valid YAML"),
    "unknown config key": (lambda w, t: coco(w, t, "--set", "preprocessing.hide_ratoi=0.2"),
                           r"unknown config key 'preprocessing.hide_ratoi'"),
    "config value of the wrong type": (lambda w, t: train(w, t, "training.epochs=abc"),
                                       r"'training.epochs' in --set overrides must be a whole number"),
    "config value not finite": (lambda w, t: train(w, t, "loss.prior=.nan"), r"'loss.prior' .* finite number"),
    "--set without =": (lambda w, t: coco(w, t, "--set", "preprocessing.seed"), r"must look like section.key=value"),
    "--chunk-size 0": (lambda w, t: coco(w, t, "--chunk-size", "0"), r"chunk_size 0 must be positive"),
    "--patch-size negative": (lambda w, t: sliding(w, t, "--patch-size", "-5"), r"patch_size -5 must be positive"),
    "--shard out of range": (lambda w, t: coco(w, t, "--shard", "3/2"), r"--shard 3/2: need 0 <= i < N"),
    "--ratio outside [0, 1]": (lambda w, t: sliding(w, t, "--ratio", "2"), r"--ratio 2.0 must be between 0 and 1"),
    "--hide-ratio outside [0, 1)": (lambda w, t: coco(w, t, "--hide-ratio", "1.5"), r"--hide-ratio 1.5 must be"),
    "output dir holds other files": (lambda w, t: coco(w, t, "--output-dir", str(with_file(t / "o", "notes.txt"))),
                                     r"did not write \(e.g. notes.txt\)"),
    "output dir of the other preprocessor": (lambda w, t: (SLIDING, w.preprocess_args(
        w.root / "chunks", research_split=False) + ["--stride", "32"]), r"holds chunks written by preprocess_coco"),
    "resume with another config": (lambda w, t: (COCO, w.preprocess_args(w.root / "chunks") + [
        "--hide-ratio", "0.5"]), r"written with a different config \(hide_ratio\).*--no-resume"),
    "output dir in use by another run": (lambda w, t: (COCO, w.preprocess_args(w.root / "chunks") + [
        "LOCKED"]), r"is being written by another tool"),
    "chunk dir without metadata.json": (lambda w, t: train(w, t, data_dir=empty_folder(t, "c")),
                                        r"no metadata.json; run preprocess_chunked.py or"),
    "preprocessing unfinished": (lambda w, t: train(w, t, data_dir=edit_metadata(copy_chunks(w, t), lambda m: m.update(
        complete=False))), r"preprocessing incomplete \(\d+ of \d+ micrographs done\)"),
    "a chunk listed but missing": (lambda w, t: train(w, t, data_dir=changed_chunk(w, t, "val_chunk_0000.pt", None)),
                                   r"val_chunk_0000.pt: listed in .* but missing"),
    "a chunk damaged": (lambda w, t: train(w, t, data_dir=changed_chunk(w, t, "train_chunk_0000.pt", b"damaged")),
                        r"train_chunk_0000.pt does not match the checksum"),
    "--prior outside (0, 1)": (lambda w, t: (TRAIN, [a for a in w.train_args(t / "runs") if a != "--use-data-prior"]
                                             + ["--prior", "1.5"]), r"class prior 1.5 .* is outside \(0, 1\)"),
    "--prior with --use-data-prior": (lambda w, t: (TRAIN, w.train_args(t / "runs") + ["--prior", "0.2"]),
                                      r"give either --prior or --use-data-prior, not both"),
    "no usable prior in the chunks": (lambda w, t: train(w, t, data_dir=edit_metadata(copy_chunks(w, t), lambda m: m[
        "priors"].update(method="unknown: pass --expected-particles"))), r"no usable prior in metadata"),
    "resume with another architecture": (lambda w, t: (TRAIN, w.train_args(w.root / "runs", "run") + [
        "model.backbone=resnet18"]), r"different config \(model.backbone\); resume it as it was with --set "
                                        r"model.backbone=\S+, or use another --exp-name"),
    "resume of a run from before a config key": (lambda w, t: run_from_before(w, t, "data.known_negative_share"),
                                                  r"\(data.known_negative_share\); resume it as it was with "
                                                  r"--set data.known_negative_share=null"),
    "a last.pt that would run code": (lambda w, t: malicious(with_file(t / "runs" / "m", "last.pt"), "last.pt") and
                                      train(w, t, exp="m"), r"last.pt holds objects other than tensors .* run code"),
    "checkpoint missing": (lambda w, t: pick(w, t, checkpoint=t / "best.pt"), r"checkpoint .*best.pt not found"),
    "checkpoint not a PyTorch file": (lambda w, t: pick(w, t, checkpoint=with_file(t, "model.pt") / "model.pt"),
                                      r"checkpoint .*model.pt cannot be read"),
    "checkpoint of another program": (lambda w, t: pick(w, t, checkpoint=(lambda p: torch.save(
        {"state_dict": {}}, p) or p)(t / "model.pt")), r"is not a checkpoint of this repo"),
    "checkpoint that would run code": (lambda w, t: pick(w, t, checkpoint=malicious(t, "model.pt")),
                                       r"could run code"),
    "no micrographs to pick": (lambda w, t: pick(w, t, micrographs=t / "*.mrc"), r"no micrographs found at"),
    "picks into a folder of labels": (lambda w, t: pick(w, t, out=with_file(t / "labels", f"{first_test_stem(w)}.csv")),
                                      r"did not write \(e.g. .*\.csv\)"),
    "picks rerun with other settings": (lambda w, t: (PICK, w.pick_args(w.root / "picks")
                                                      + ["--candidate-threshold", "0"]),
                                        r"holds picks made with other settings \(candidate_threshold\)"),
    "every micrograph unreadable": (lambda w, t: pick(w, t, micrographs=with_file(t / "mics", "a.mrc")),
                                    r"none of the 1 micrographs could be picked"),
    "pick distance not positive": (lambda w, t: pick(w, t, "--min-distance-fraction", "0"),
                                   r"--min-distance-fraction 0 must be positive"),
    "micrographs more than 2x off the training pixel size": (lambda w, t: pick(
        w, t, "--pixel-size", "2.5", checkpoint=checkpoint_at_pixel_size(w, t / "best.pt", 1.0)),
        r"at 2.5 Å/px, the model was trained at 1 Å/px .*--force"),
    "rethreshold a folder without candidates": (lambda w, t: (threshold_picks.main, [
        "--output-dir", str(empty_folder(t, "picks"))]), r"holds no manifest.json"),
    "--peak-symmetries with --no-peak-rescore": (lambda w, t: pick(w, t, "--peak-symmetries", "8",
                                                                   "--no-peak-rescore"),
                                                 r"--peak-symmetries 8 averages views of the rescored peaks"),
    "ground truth missing": (lambda w, t: (evaluate_picks.main, ["--picks", str(w.root / "picks"), "--ground-truth",
                                                                 str(t / "truth.json"), "--output",
                                                                 str(t / "eval.json")]), r"truth.json"),
    "synthetic --output-dir holding other files": (lambda w, t: (make_synthetic_dataset.main, [
        "--output-dir", str(with_file(t / "syn", "mine.txt"))]), r"is not empty and holds no synthetic dataset"),
}


def readme_rows():
    """First cells of the bad-input table the README links to (the rows between its header and the next blank
    line)."""
    text = (REPO / "docs" / "troubleshooting.md").read_text() + "\n"
    table = text[text.index("| bad input |"):]
    table = table[:table.index("\n\n")]
    return [re.match(r"\| ([^|]+?) \|", line).group(1) for line in table.splitlines()[2:]]


def test_every_readme_row_is_a_test_and_every_test_a_row():
    assert readme_rows() == list(CASES)
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_status_2(case, world, tmp_path, capsys):
    build, expected = CASES[case]
    main, argv = build(world, tmp_path)
    locked = "LOCKED" in argv
    argv = [a for a in argv if a != "LOCKED"]
    with pytest.raises(SystemExit) as exit_info, (folder_lock(world.root / "chunks", "another tool") if locked
                                                  else nullcontext()):
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and re.search(expected, error), error
    assert not (tmp_path / "code_ran").exists()
