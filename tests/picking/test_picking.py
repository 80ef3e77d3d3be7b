"""Picking: dense scoring, picks from score maps, output formats, the manifest and the CLI's bad input."""
import json
from dataclasses import replace

import mrcfile
import numpy as np
import pytest
import torch

import pick_particles
from conftest import write_malicious_checkpoint
from datasets.chunks.format import PreprocessingFacts
from datasets.geometry import to_scaled
from datasets.io.coordinates import read_coco, read_coordinates
from datasets.io.micrographs import prepare_micrograph
from models.checkpoint import V1_FORMAT, save_checkpoint
from models.ensemble import MeanLogitEnsemble
from models.input import NetworkInput
from models.resnet import build_model
from picking.evaluate import precision_recall
from picking.score import (Picker, load_picker, pick_distances, pick_micrograph, picks_from_score_map,
                           prepare_for_picking, rescore_at_peaks, score_micrograph, square_symmetries, window_grid,
                           window_scorer)
from picking.writers import (FORMATS, candidates_path, per_micrograph_files, read_candidates, record,
                             write_candidates, write_outputs)
from synthetic.simulator import SPECIES_STREAM, SyntheticConfig, generate_micrograph, make_species

DIAMETER = 40.0
SYNTHETIC = SyntheticConfig(width=512, height=448, diameter=DIAMETER, density=0.12, snr=1.0, denoised=True,
                            junk=0, contaminants=0, carbon_fraction=0, seed=5)
# Training-like preprocessing: particles rescaled to 64 px (scale 1.6), 128 px windows seen at 64 px.
FACTS = PreprocessingFacts(patch_size=128, particle_diameter_px=DIAMETER, scale=64 / DIAMETER, clip_sigma=4.0)
SPEC = NetworkInput.for_patches(64, "patch", patch_size=128, clip_sigma=4.0)
# Cheap preprocessing for the CLI tests, whose picks do not matter: 64 px windows seen at 32 px.
SMALL_FACTS = replace(FACTS, patch_size=64, scale=32 / DIAMETER)
SMALL_SPEC = replace(SPEC, input_size=32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two generated micrographs (MRC) in a folder, and every particle of each as ground truth."""
    folder = tmp_path_factory.mktemp("micrographs")
    species = make_species(np.random.default_rng([SYNTHETIC.seed, SPECIES_STREAM]), SYNTHETIC)
    truth = {}
    for index in range(2):
        micrograph = generate_micrograph(SYNTHETIC, species, 2, index)
        stem = f"synthetic_{index}"
        with mrcfile.new(folder / f"{stem}.mrc") as mrc:
            mrc.set_data(micrograph.image)
        centres = micrograph.centres
        truth[stem] = np.column_stack([centres, np.full(len(centres), DIAMETER), np.full(len(centres), np.nan)])
    return folder, truth


def make_checkpoint(path, model=None, facts=SMALL_FACTS, spec=SMALL_SPEC):
    torch.manual_seed(0)
    model = model or build_model("resnet_tiny", 0.3)
    save_checkpoint(path, {"model": model.state_dict(), "ema": None, "preprocessing": facts.to_dict(),
                           "network_input": spec.to_dict(),
                           "config": {"model": {"backbone": "resnet_tiny", "dropout": 0.3}}})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")


def pick_cli(checkpoint, micrographs, output_dir, *extra):
    return pick_particles.main(["--checkpoint", str(checkpoint), "--micrographs", str(micrographs),
                                "--output-dir", str(output_dir), "--device", "cpu", *extra])


class DarkBlobScorer(torch.nn.Module):
    """A hand-made classifier: minus the mean of the window's central square (particles are dark)."""

    def forward(self, x):
        size = x.shape[-1]
        centre = x[:, 0, 3 * size // 8:5 * size // 8, 3 * size // 8:5 * size // 8]
        return -4 * centre.mean(dim=(1, 2))


def test_coordinates_survive_every_output_format(tmp_path):
    rng = np.random.default_rng(0)
    particles = np.column_stack([rng.uniform(0, 1000, (30, 2)), np.full(30, 90.0), np.sort(rng.normal(0, 3, 30))[::-1]])
    entry = {"stem": "mic_a", "path": "/data/mic_a.mrc", "status": "done", "n_candidates": 30, "width": 1000,
             "height": 1000, "diameter_px": 90.0}
    manifest = {"micrographs": [], "checkpoint": "best.pt", "settings": {"relion_project_dir": str(tmp_path)}}
    record(tmp_path, manifest, entry)
    write_candidates(tmp_path, "mic_a", particles)
    outputs = {"threshold": None, "picks_per_micrograph": None, "formats": list(FORMATS)}
    write_outputs(tmp_path, manifest, {"mic_a": read_candidates(tmp_path, "mic_a")}, outputs)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {**manifest, "outputs": {**outputs, "n_picks": 30}}
    files = {**per_micrograph_files(tmp_path, entry, FORMATS, tmp_path), "cryosparc": tmp_path / "particles.star"}
    tolerance = {"relion": 5e-4, "cryosparc": 5e-4, "csv": 5e-4, "box": 0.5, "topaz": 0.5}
    for name, path in files.items():
        back = read_coordinates(path)["mic_a"]
        assert np.abs(back[:, :2] - particles[:, :2]).max() <= tolerance[name], name
    for name in ("relion", "cryosparc", "csv", "topaz"):
        np.testing.assert_allclose(read_coordinates(files[name])["mic_a"][:, 3], particles[:, 3], atol=1e-5)
    table, images = read_coco(tmp_path / "picks.json")
    np.testing.assert_allclose(table["mic_a"], particles, atol=1e-9)
    assert images["mic_a"]["file_name"] == "mic_a.mrc"
    assert "/data/mic_a.mrc" in files["cryosparc"].read_text()


def test_ground_truth_peaks_give_auprc_one(synthetic):
    """A score map peaking exactly at the particles, through the picking code path, scores AUPRC 1."""
    _, truth = synthetic
    stem, targets = "synthetic_0", truth["synthetic_0"]
    scale = FACTS.scale
    height, width = round(SYNTHETIC.height * scale), round(SYNTHETIC.width * scale)
    scale_xy = (width / SYNTHETIC.width, height / SYNTHETIC.height)
    grid = window_grid(height, width, stride=16)
    rows, cols = np.meshgrid(np.arange(grid.rows), np.arange(grid.cols), indexing="ij")
    cells = grid.centres(rows.ravel(), cols.ravel())
    centres = to_scaled(targets[:, :2], scale_xy)
    distance2 = ((cells[:, None, :] - centres[None, :, :]) ** 2).sum(-1).min(axis=1)
    bumps = -10 + 20 * np.exp(-distance2 / (2 * (DIAMETER * scale / 4) ** 2))
    score_map = torch.from_numpy(bumps.reshape(grid.rows, grid.cols)).float()
    picks = picks_from_score_map(score_map, grid, scale_xy, (SYNTHETIC.height, SYNTHETIC.width),
                                 min_distance_px=0.5 * DIAMETER, threshold=pick_particles.DEFAULT_CANDIDATE_THRESHOLD,
                                 diameter_px=DIAMETER)
    evaluation = precision_recall({stem: picks}, {stem: targets}, radius_fraction=0.5)
    assert evaluation.curve.auprc == 1.0
    assert evaluation.curve.n_picks == len(targets)


def test_dark_blob_scorer_finds_most_planted_particles(synthetic):
    folder, truth = synthetic
    picks = {stem: pick_micrograph(Picker(DarkBlobScorer(), FACTS, SPEC), folder / f"{stem}.mrc", stride=16,
                                   min_distance_px=0.5 * DIAMETER, threshold=None, device="cpu")
             for stem in truth}
    best = precision_recall(picks, truth, radius_fraction=0.5).curve.at_best()
    assert best["recall"] >= 0.7
    assert best["precision"] >= 0.7


@pytest.mark.parametrize("normalization", ["patch", "patch_mean", "micrograph"])
def test_downsampled_windows_score_like_exact_windows(synthetic, normalization):
    """Shrinking the micrograph once gives the logits of shrinking every window, up to the window rim."""
    folder, _ = synthetic
    image, _ = prepare_micrograph(mrcfile.read(folder / "synthetic_0.mrc"), 1.0, 4.0)
    torch.manual_seed(1)
    model = build_model("resnet_tiny", 0.3).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    options = {"patch_size": 128, "spec": replace(SPEC, normalization=normalization), "stride": 16, "device": "cpu"}
    exact, exact_grid = score_micrograph(model, image[:321, :449], method="exact", **options)
    fast, fast_grid = score_micrograph(model, image[:321, :449], method="downsample", **options)
    assert exact_grid == fast_grid
    assert (exact - fast).abs().max() < 0.05 * (exact.max() - exact.min())


class MeanScorer(torch.nn.Module):
    """Scores a window by the mean of what the network is given: 0 for standardised windows."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("method", ["downsample", "exact"])
def test_windows_are_normalised_as_the_checkpoint_was_trained(synthetic, method):
    folder, _ = synthetic
    image, _ = prepare_micrograph(mrcfile.read(folder / "synthetic_0.mrc"), 1.0, 4.0)
    options = {"patch_size": 64, "stride": 16, "device": "cpu", "method": method}
    patch, _ = score_micrograph(MeanScorer(), image, spec=SMALL_SPEC, **options)
    kept, grid = score_micrograph(MeanScorer(), image, spec=replace(SMALL_SPEC, normalization="micrograph"), **options)
    assert patch.abs().max() < 0.01  # zero up to the resize at the window rim
    padded = np.pad(image.astype(np.float64), 32, mode="reflect")
    row, col = grid.rows // 2, grid.cols // 2
    y, x = grid.offset_y + row * grid.stride, grid.offset_x + col * grid.stride
    window_mean = padded[y:y + 64, x:x + 64].mean()  # the window centred on (x, y), 32 px of padding
    assert kept[row, col].item() == pytest.approx((window_mean - 127.5) / 31.875, abs=0.02)
    assert kept.std() > 0.05


@pytest.mark.parametrize("recorded, normalization", [("per_patch_standardise", "patch"), ("micrograph", "micrograph")])
def test_version_1_checkpoints_pick_as_they_were_trained(tmp_path, recorded, normalization):
    """v1 kept the facts and the network input in one flat dict and normalised by 32 grey levels."""
    path = make_checkpoint(tmp_path / "old.pt")
    state = torch.load(path, weights_only=True)
    state["format"] = V1_FORMAT
    state["preprocessing"] = {**SMALL_FACTS.to_dict(), "input_size": 32, "target_diameter": 32,
                              "native_resolution": False, "normalization": recorded}
    del state["network_input"]
    torch.save(state, path)
    picker = load_picker(path, "cpu")
    assert picker.facts == SMALL_FACTS
    assert picker.spec == NetworkInput(input_size=32, normalization=normalization, grey_levels=32.0)


def test_picker_folds_batch_norm_and_keeps_the_logits(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet_tiny", 0.3)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.2, 0.2)
    picker = load_picker(make_checkpoint(tmp_path / "best.pt", model), "cpu").model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in picker.modules())
    windows = torch.randn(16, 1, 32, 32)
    with torch.inference_mode():
        expected = model.eval()(windows)
        assert expected.std() > 0.01
        torch.testing.assert_close(picker(windows.contiguous(memory_format=torch.channels_last)), expected,
                                   atol=1e-4, rtol=1e-4)


class ParaboloidScorer:
    """Stands in for a WindowScorer: the logit of a window is a paraboloid of its centre, top at (103, 57)."""
    factor = 2

    def __init__(self):
        self.seen = []

    def __call__(self, centres_xy, symmetries=1):
        self.seen.append(centres_xy.clone())
        x, y = centres_xy[:, 0].double(), centres_xy[:, 1].double()
        return (5 - ((x - 103) ** 2 + (y - 57) ** 2) / 100).float()


def test_peak_rescoring_scores_the_sub_cell_position_and_keeps_the_higher_logit():
    scorer = ParaboloidScorer()
    centres = np.array([[102.6, 57.4], [40.0, 40.0], [300.0, -3.0]])
    grid_logits = np.array([1.0, 9.0, -1.0])
    moved, logits = rescore_at_peaks(scorer, centres, grid_logits, shape=(120, 201))
    np.testing.assert_array_equal(moved, centres)  # positions stay the parabola's
    assert scorer.seen[0].tolist() == [[102, 58], [40, 40], [200, 0]]  # factor multiples inside the micrograph
    expected = 5 - np.array([1 + 1, 63 ** 2 + 17 ** 2, 97 ** 2 + 57 ** 2]) / 100
    np.testing.assert_allclose(logits, np.maximum(grid_logits, expected), rtol=1e-6)


def test_peak_rescoring_keeps_the_picks_and_raises_their_scores(synthetic):
    folder, truth = synthetic
    options = dict(stride=16, min_distance_px=0.5 * DIAMETER, threshold=None, device="cpu")
    picker = Picker(DarkBlobScorer(), FACTS, SPEC)
    plain = pick_micrograph(picker, folder / "synthetic_0.mrc", rescore_peaks=False, **options)
    rescored = pick_micrograph(picker, folder / "synthetic_0.mrc", **options)
    assert len(plain) > 20
    order = np.lexsort(plain[:, :2].T), np.lexsort(rescored[:, :2].T)
    np.testing.assert_array_equal(plain[order[0], :2], rescored[order[1], :2])
    assert np.all(rescored[order[1], 3] >= plain[order[0], 3]) and np.any(rescored[order[1], 3] > plain[order[0], 3])


class PixelWeightScorer(torch.nn.Module):
    """A classifier with no symmetry: the logit is the window's pixels weighted by a fixed random map."""

    def __init__(self, size):
        super().__init__()
        self.weights = torch.nn.Parameter(torch.randn(size, size, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return (x[:, 0] * self.weights).sum(dim=(1, 2))


def test_square_symmetries_are_the_eight_distinct_views():
    patch = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = [view[0, 0].numpy() for view in square_symmetries(patch, 8)]
    expected = [np.rot90(image, k) for image in (patch[0, 0].numpy(), patch[0, 0].numpy()[:, ::-1]) for k in range(4)]
    for view, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(view, want)
    assert len({view.tobytes() for view in views}) == 8
    assert [len(list(square_symmetries(patch, count))) for count in (1, 4)] == [1, 4]


@pytest.mark.parametrize("symmetries", [4, 8])
def test_symmetry_averaged_logits_are_the_mean_over_the_rotated_and_mirrored_windows(synthetic, symmetries):
    folder, _ = synthetic
    micrograph, _ = prepare_micrograph(mrcfile.read(folder / "synthetic_0.mrc"), FACTS.scale, 4.0)
    model = PixelWeightScorer(SPEC.input_size)
    scorer, _ = window_scorer(model, micrograph, patch_size=128, spec=SPEC, stride=16, device="cpu", bf16=False)
    centres = torch.tensor([[100, 60], [300, 420], [0, 0], [512, 300]])
    windows = scorer._network_input(centres)[:, 0].numpy()
    weights = model.weights.detach().numpy()
    views = [np.rot90(image, k, axes=(1, 2)) for image in (windows, windows[:, :, ::-1]) for k in range(4)]
    expected = np.mean([(view * weights).sum(axis=(1, 2)) for view in views[:symmetries]], axis=0)
    np.testing.assert_allclose(scorer(centres, symmetries).numpy(), expected, rtol=1e-4, atol=1e-3)
    assert not np.allclose(scorer(centres, 1).numpy(), expected, atol=1e-1)


@pytest.mark.slow
def test_rerun_skips_done_micrographs_and_repicks_deleted_ones(checkpoint, synthetic, tmp_path):
    folder, truth = synthetic
    first = pick_cli(checkpoint, folder, tmp_path, "--stride", "16", "--overlays", "1")
    assert (first["picked"], first["skipped"]) == (2, 0)
    assert (tmp_path / "overlays" / "synthetic_0.png").is_file()
    assert not (tmp_path / "overlays" / "synthetic_1.png").exists()
    again = pick_cli(checkpoint, folder, tmp_path, "--stride", "16")
    assert (again["picked"], again["skipped"]) == (0, 2)
    candidates_path(tmp_path, "synthetic_1").unlink()
    third = pick_cli(checkpoint, folder, tmp_path, "--stride", "16")
    assert (third["picked"], third["skipped"]) == (1, 1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [(e["stem"], e["status"]) for e in manifest["micrographs"]] == [(s, "done") for s in sorted(truth)]
    assert sum(len(p) for p in read_coordinates(tmp_path / "particles.star").values()) == manifest["outputs"]["n_picks"]


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused(checkpoint, synthetic, tmp_path, capsys):
    folder, _ = synthetic
    pick_cli(checkpoint, folder / "synthetic_0.mrc", tmp_path, "--stride", "16")
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(checkpoint, folder / "synthetic_0.mrc", tmp_path, "--stride", "16", "--candidate-threshold", "0")
    assert exit_info.value.code == 2
    assert "candidate_threshold" in capsys.readouterr().err
    again = pick_cli(checkpoint, folder / "synthetic_0.mrc", tmp_path, "--stride", "16", "--threshold", "0.5")
    assert (again["picked"], again["skipped"], again["outputs"]["threshold"]) == (0, 1, 0.5)


@pytest.mark.slow
def test_rerun_with_a_retrained_checkpoint_at_the_same_path_is_refused(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    path = make_checkpoint(tmp_path / "best.pt")
    pick_cli(path, folder / "synthetic_0.mrc", tmp_path / "picks", "--stride", "16")
    retrained = torch.load(path, weights_only=True)
    retrained["model"] = {name: value + 0.01 if value.is_floating_point() else value
                          for name, value in retrained["model"].items()}
    save_checkpoint(path, retrained)
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(path, folder / "synthetic_0.mrc", tmp_path / "picks", "--stride", "16")
    assert exit_info.value.code == 2 and "checkpoint_sha256" in capsys.readouterr().err


@pytest.mark.slow
def test_unreadable_micrograph_is_skipped_and_counted(checkpoint, synthetic, tmp_path):
    folder, _ = synthetic
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.mrc").write_bytes((folder / "synthetic_0.mrc").read_bytes())
    (mixed / "broken.mrc").write_bytes(b"not an mrc file" * 100)
    with pytest.warns(UserWarning, match="broken.mrc"):
        summary = pick_cli(checkpoint, mixed, tmp_path / "picks", "--stride", "16")
    assert (summary["picked"], summary["failed"]) == (1, 1)
    entries = {e["stem"]: e for e in json.loads((tmp_path / "picks" / "manifest.json").read_text())["micrographs"]}
    assert entries["broken"]["status"] == "failed" and "broken.mrc" in entries["broken"]["reason"]
    assert entries["good"]["status"] == "done"


@pytest.mark.parametrize("content", ["text", "foreign_checkpoint"])
def test_not_our_checkpoint_is_a_one_line_error(content, synthetic, tmp_path, capsys):
    folder, _ = synthetic
    path = tmp_path / "model.pt"
    if content == "text":
        path.write_text("this is not a checkpoint\n")
    else:
        torch.save({"state_dict": build_model("resnet_tiny").state_dict()}, path)
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(path, folder, tmp_path / "picks")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "model.pt" in error and "\n" not in error


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    marker = tmp_path / "code_ran"
    write_malicious_checkpoint(tmp_path / "model.pt", marker)
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(tmp_path / "model.pt", folder, tmp_path / "picks")
    assert exit_info.value.code == 2 and not marker.exists()
    error = capsys.readouterr().err.strip()
    assert "model.pt" in error and "could run code" in error and "\n" not in error


@pytest.mark.parametrize("option", [["--min-distance-fraction", "0"], ["--batch-size", "-1"],
                                    ["--expected-particles", "0"]])
def test_bad_pick_options_are_refused_before_the_model_loads(option, synthetic, tmp_path, capsys):
    folder, _ = synthetic
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(tmp_path / "missing.pt", folder, tmp_path / "picks", *option)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {option[0]} {option[1]}") and error.endswith("must be positive")
    assert not (tmp_path / "picks").exists()


def test_peak_symmetries_without_peak_rescoring_is_refused(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(tmp_path / "missing.pt", folder, tmp_path / "picks", "--peak-symmetries", "8", "--no-peak-rescore")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --peak-symmetries 8") and "--no-peak-rescore" in error and "\n" not in error
    assert not (tmp_path / "picks").exists()


def test_no_peak_rescore_alone_picks_the_grid_and_the_manifest_records_one_view(checkpoint, synthetic, tmp_path):
    folder, _ = synthetic
    plain = pick_cli(checkpoint, folder / "synthetic_0.mrc", tmp_path / "plain", "--stride", "16", "--no-peak-rescore")
    rescored = pick_cli(checkpoint, folder / "synthetic_0.mrc", tmp_path / "rescored", "--stride", "16")
    assert (plain["picked"], rescored["picked"]) == (1, 1)
    settings = [json.loads((tmp_path / name / "manifest.json").read_text())["settings"]
                for name in ("plain", "rescored")]
    assert [(s["peak_rescore"], s["peak_symmetries"]) for s in settings] == [(False, 1), (True, 4)]


def test_picks_keep_out_of_the_edge_margin(checkpoint, synthetic, tmp_path):
    folder, _ = synthetic
    margin = 60.0
    pick_cli(checkpoint, folder, tmp_path, "--stride", "8", "--edge-margin", str(margin), "--threshold=-1e9",
             "--candidate-threshold=-1e9",
             "--formats", "csv")
    picks = read_coordinates(tmp_path / "synthetic_0.csv")["synthetic_0"]
    assert len(picks) > 20
    x, y = picks[:, 0], picks[:, 1]
    assert x.min() >= margin and y.min() >= margin
    assert x.max() <= SYNTHETIC.width - 1 - margin and y.max() <= SYNTHETIC.height - 1 - margin
    gaps = np.linalg.norm(picks[:, None, :2] - picks[None, :, :2], axis=-1) + np.eye(len(picks)) * 1e9
    assert gaps.min() >= 0.5 * DIAMETER


def test_the_default_edge_margin_is_an_eighth_of_a_diameter(checkpoint, synthetic, tmp_path):
    folder, _ = synthetic
    pick_cli(checkpoint, folder, tmp_path, "--stride", "8", "--threshold=-1e9", "--candidate-threshold=-1e9",
             "--formats", "csv")
    picks = read_coordinates(tmp_path / "synthetic_0.csv")["synthetic_0"]
    border = np.minimum.reduce([picks[:, 0], picks[:, 1], SYNTHETIC.width - 1 - picks[:, 0],
                                SYNTHETIC.height - 1 - picks[:, 1]])
    assert border.min() >= DIAMETER / 8
    assert (border < DIAMETER / 2).any()  # particles cut by the border can be picked


def test_pick_distances_scale_with_the_diameter_and_an_edge_margin_given_stands():
    assert pick_distances(64.0) == (32.0, 8.0)
    assert pick_distances(64.0, 0.4, edge_margin_px=0.0) == (25.6, 0.0)
    assert pick_distances(61.0, edge_margin_px=20.0) == (30.5, 20.0)


# Ensembles: several checkpoints trained on the same patches score the mean of their logits.

def member(path, seed, facts=SMALL_FACTS):
    """A checkpoint whose network starts from `seed` (so members differ)."""
    torch.manual_seed(seed)
    return make_checkpoint(path, build_model("resnet_tiny", 0.3), facts)


def pick_with(checkpoints, micrograph, output_dir):
    return pick_particles.main(["--checkpoint", *map(str, checkpoints), "--micrographs", str(micrograph),
                                "--output-dir", str(output_dir), "--device", "cpu", "--stride", "16"])


def window_logits(picker, micrograph):
    image = prepare_for_picking(micrograph, picker.facts).image
    score_map, _ = score_micrograph(picker.model, image, patch_size=picker.facts.patch_size, spec=picker.spec,
                                    stride=16, device="cpu", bf16=False)
    return score_map


def test_the_ensemble_network_returns_the_mean_of_its_members_logits():
    members = [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]
    x = torch.randn(5, 3)
    assert torch.allclose(MeanLogitEnsemble(members)(x), (members[0](x) + members[1](x)) / 2)
    with pytest.raises(ValueError):
        MeanLogitEnsemble([])


def test_an_ensemble_scores_every_window_at_the_mean_of_its_members_logits(synthetic, tmp_path):
    folder, _ = synthetic
    micrograph = folder / "synthetic_0.mrc"
    first, second = member(tmp_path / "a.pt", 1), member(tmp_path / "b.pt", 2)
    alone = [window_logits(load_picker(path, "cpu"), micrograph) for path in (first, second)]
    together = window_logits(load_picker([first, second], "cpu"), micrograph)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the members differ ...
    assert torch.allclose(together, (alone[0] + alone[1]) / 2, atol=1e-4)  # ... and the ensemble is their mean
    single = load_picker([first], "cpu")
    assert not isinstance(single.model, MeanLogitEnsemble)  # one checkpoint is no ensemble


def test_members_trained_on_other_patches_are_refused_naming_the_checkpoint(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    first = member(tmp_path / "a.pt", 1)
    other = member(tmp_path / "other.pt", 2, replace(SMALL_FACTS, particle_diameter_px=60.0))
    with pytest.raises(SystemExit) as exit_info:
        pick_with([first, other], folder / "synthetic_0.mrc", tmp_path / "picks")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert str(other) in error and "same chunks" in error
    assert not (tmp_path / "picks" / "manifest.json").exists()


def test_the_manifest_lists_every_member_and_a_rerun_with_other_members_is_refused(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    micrograph = folder / "synthetic_0.mrc"
    first, second = member(tmp_path / "a.pt", 1), member(tmp_path / "b.pt", 2)
    done = pick_with([first, second], micrograph, tmp_path / "picks")
    manifest = json.loads((tmp_path / "picks" / "manifest.json").read_text())
    assert manifest["checkpoint"] == [str(first.resolve()), str(second.resolve())]
    assert len(manifest["settings"]["checkpoint_sha256"]) == 2 and done["picked"] == 1
    again = pick_with([first, second], micrograph, tmp_path / "picks")
    assert (again["picked"], again["skipped"]) == (0, 1)
    with pytest.raises(SystemExit) as exit_info:
        pick_with([first], micrograph, tmp_path / "picks")
    assert exit_info.value.code == 2 and "checkpoint" in capsys.readouterr().err


def test_a_member_given_twice_is_refused_before_the_model_loads(synthetic, tmp_path, capsys):
    folder, _ = synthetic
    first = member(tmp_path / "a.pt", 1)
    with pytest.raises(SystemExit) as exit_info:
        pick_with([first, tmp_path / "." / "a.pt"], folder / "synthetic_0.mrc", tmp_path / "picks")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "is given twice; pass each ensemble member once" in error
    assert not (tmp_path / "picks").exists()
