"""Keep every candidate pick with its score, write the picks above a threshold in every format, and the manifest.

Picking scores each micrograph once and keeps all its candidates (`candidates/<stem>.npy`: float64
(N, 4) x, y, diameter, logit, best first, in the micrograph's own pixels). The outputs are then written
from the candidates at one threshold (`write_outputs`), by `pick_particles.py` at its end and by
`threshold_picks.py` at any new threshold, without the network:
  relion     RELION job layout: <subfolder>/<stem>_autopick.star (a `data_` block: _rlnCoordinateX/Y,
             _rlnClassNumber, _rlnAutopickFigureOfMerit, _rlnAnglePsi, as RELION's autopicker writes) and
             autopick.star (`data_coordinate_files`: _rlnMicrographName, _rlnMicrographCoordinates),
             paths relative to the RELION project folder
  cryosparc  particles.star: one `data_particles` block, _rlnMicrographName = the micrograph's full path
  csv        <stem>.csv, CryoPPP: X-Coordinate, Y-Coordinate, Diameter, Confidence Score (the logit)
  box        <stem>.box, EMAN: integer box corner and box size = particle diameter (no score: threshold first)
  topaz      <stem>.txt, Topaz: image_name x_coord y_coord score
  coco       picks.json, every micrograph: bbox = diameter square around each centre, `score` = logit
`manifest.json` = {"micrographs": [{"stem", "path", "status": "started" | "done" | "failed", "n_candidates",
"width", "height", "pixel_size", "size_ratio", "diameter_px", "seconds" | "reason"}], "checkpoint" (its
path, or the list of an ensemble's), "settings", "outputs"}, rewritten atomically before and after every
micrograph: a micrograph whose entry says done and whose candidates exist is not picked again; only files
of listed micrographs are ever overwritten (`own_files`). A process picking shard i of N keeps its own
`manifest.shard-i-of-N.json` (no two processes write one file) and the manifests are merged on read
(`read_manifests`).
"""
import fnmatch
import json
import re
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.files import LOCK_FILE, atomic_path, atomic_write_json, atomic_write_text
from datasets.io.coordinates import CRYOPPP_COLUMNS, TOPAZ_COLUMNS, write_coco

FORMATS = ("relion", "cryosparc", "csv", "box", "topaz", "coco")
DEFAULT_FORMATS = FORMATS[:-1]  # COCO on request: its JSON is as slow to write as all the others together
OLD_FORMAT_NAMES = {"star": "relion", "txt": "topaz"}  # accepted for one release, with a warning
PER_MICROGRAPH_SUFFIX = {"csv": ".csv", "box": ".box", "topaz": ".txt"}
CANDIDATES = "candidates"
COMBINED = {"relion": "autopick.star", "cryosparc": "particles.star", "coco": "picks.json"}
HISTOGRAM = "score_histogram.png"
MANIFEST = "manifest.json"
SHARD_MANIFESTS = "manifest.shard-*-of-*.json"
RELION_JOB = re.compile(r"^job\d+$")


def candidates_path(output_dir, stem: str) -> Path:
    return Path(output_dir) / CANDIDATES / f"{stem}.npy"


def write_candidates(output_dir, stem: str, particles: np.ndarray) -> None:
    """Every candidate pick of one micrograph (N, 4), best first, as a plain .npy (no pickle)."""
    with atomic_path(candidates_path(output_dir, stem)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(particles, dtype=np.float64).reshape(-1, 4), allow_pickle=False)


def read_candidates(output_dir, stem: str) -> np.ndarray:
    path = candidates_path(output_dir, stem)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the candidates {path} ({error}); delete that file and rerun the same "
                         f"pick_particles.py command: it picks that micrograph again") from error


def select_picks(candidates: np.ndarray, threshold: float | None, picks_per_micrograph: int | None) -> np.ndarray:
    """The candidates scoring at least `threshold`, at most the best `picks_per_micrograph` of them."""
    kept = candidates if threshold is None else candidates[candidates[:, 3] >= threshold]
    return kept[:picks_per_micrograph]


def relion_subfolder(micrograph: Path, project_dir: Path) -> Path:
    """Where RELION's autopicker puts a micrograph's coordinates inside its job folder: the micrograph's
    folder relative to the project, less a leading `<JobType>/jobNNN/` (MotionCorr/job002/Movies -> Movies);
    a micrograph outside the project gets the name of its own folder."""
    try:
        parts = micrograph.parent.relative_to(project_dir).parts
    except ValueError:
        return Path(micrograph.parent.name)
    return Path(*parts[2:]) if len(parts) >= 2 and RELION_JOB.match(parts[1]) else Path(*parts)


def project_path(path: Path, project_dir: Path) -> str:
    """`path` as RELION names it: relative to the project folder, or absolute outside it."""
    try:
        return path.relative_to(project_dir).as_posix()
    except ValueError:
        return path.as_posix()


def relion_star_path(output_dir, entry: dict, project_dir) -> Path:
    micrograph = Path(entry["path"])
    return Path(output_dir) / relion_subfolder(micrograph, Path(project_dir)) / f"{entry['stem']}_autopick.star"


def per_micrograph_files(output_dir, entry: dict, formats, project_dir) -> dict[str, Path]:
    """The per-micrograph output file of each requested format, keyed by format."""
    files = {name: Path(output_dir) / f"{entry['stem']}{suffix}" for name, suffix in PER_MICROGRAPH_SUFFIX.items()
             if name in formats}
    if "relion" in formats:
        files["relion"] = relion_star_path(output_dir, entry, project_dir)
    return files


STAR_HEADER = "\n# version 30001\n\ndata_{block}\n\nloop_\n"


def star_text(block: str, columns: list[str], row_format: str, rows) -> str:
    """A one-loop STAR file as RELION writes it (`# version 30001`, numbered `_rln` labels)."""
    labels = "".join(f"_{name} #{index}\n" for index, name in enumerate(columns, start=1))
    return STAR_HEADER.format(block=block) + labels + rows_text(row_format, rows) + "\n"


def rows_text(row_format: str, rows) -> str:
    """Rows formatted with `row_format` (one %-format per line): thousands of files a second, unlike a
    DataFrame writer."""
    return "".join(row_format % tuple(row) for row in rows)


def relion_coordinates_text(picks: np.ndarray) -> str:
    """One micrograph's RELION coordinate file, the columns RELION's autopicker writes."""
    columns = ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnAnglePsi"]
    return star_text("", columns, "%.3f\t%.3f\t0\t%.6f\t-999.0\n", picks[:, [0, 1, 3]].tolist())


def write_micrograph_outputs(output_dir, entry: dict, picks: np.ndarray, formats, project_dir) -> None:
    files = per_micrograph_files(output_dir, entry, formats, project_dir)
    box = round(entry["diameter_px"])
    corners = np.rint(picks[:, :2] - box / 2).astype(np.int64).tolist()
    centres = np.rint(picks[:, :2]).astype(np.int64).tolist()
    texts = {"relion": lambda: relion_coordinates_text(picks),
             "csv": lambda: ",".join(CRYOPPP_COLUMNS) + "\n" + rows_text("%.3f,%.3f,%.3f,%.6f\n", picks.tolist()),
             "box": lambda: rows_text(f"%d\t%d\t{box}\t{box}\n", corners),
             "topaz": lambda: "\t".join(TOPAZ_COLUMNS) + "\n" + rows_text(
                 f"{entry['stem']}\t%d\t%d\t%.6f\n", [(x, y, s) for (x, y), s in zip(centres, picks[:, 3].tolist())])}
    for name, path in files.items():
        atomic_write_text(path, texts[name]())


def write_combined(output_dir, entries: list[dict], picks: dict, formats, project_dir) -> None:
    """autopick.star, particles.star and picks.json over every micrograph picked."""
    output_dir, project_dir = Path(output_dir), Path(project_dir)
    if "relion" in formats:
        rows = [(project_path(Path(e["path"]), project_dir),
                 project_path(relion_star_path(output_dir, e, project_dir).absolute(), project_dir)) for e in entries]
        atomic_write_text(output_dir / COMBINED["relion"], star_text(
            "coordinate_files", ["rlnMicrographName", "rlnMicrographCoordinates"], "%s\t%s\n", rows))
    if "cryosparc" in formats:
        text = "".join(rows_text(f"{Path(e['path']).as_posix()}\t%.3f\t%.3f\t%.6f\n",
                                 picks[e["stem"]][:, [0, 1, 3]].tolist()) for e in entries)
        columns = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
        atomic_write_text(output_dir / COMBINED["cryosparc"], star_text("particles", columns, "", []) + text)
    if "coco" in formats:
        images = {e["stem"]: {"id": index, "file_name": Path(e["path"]).name, "width": e["width"],
                              "height": e["height"]} for index, e in enumerate(entries)}
        write_coco(output_dir / COMBINED["coco"], {e["stem"]: picks[e["stem"]] for e in entries}, images)


def done_entries(manifest: dict) -> list[dict]:
    """The micrographs picked, by name: the combined files come out the same however many shards picked them."""
    return sorted((entry for entry in manifest["micrographs"] if entry["status"] == "done"), key=lambda e: e["stem"])


def remove_other_formats(output_dir, entries: list[dict], formats, project_dir) -> None:
    """Delete our files of the formats not written now, so no file is left at an older threshold."""
    others = [name for name in FORMATS if name not in formats]
    for entry in entries:
        for path in per_micrograph_files(output_dir, entry, others, project_dir).values():
            path.unlink(missing_ok=True)
    for name in others:
        if name in COMBINED:
            (Path(output_dir) / COMBINED[name]).unlink(missing_ok=True)


def write_outputs(output_dir, manifest: dict, candidates: dict, outputs: dict) -> dict:
    """Every output format of every picked micrograph from its `candidates` at `outputs` (threshold,
    picks_per_micrograph, formats, ...); records `outputs` with the pick count in the manifest. Returns
    stem -> picks written."""
    entries, project_dir = done_entries(manifest), manifest["settings"]["relion_project_dir"]
    picks = {e["stem"]: select_picks(candidates[e["stem"]], outputs["threshold"], outputs["picks_per_micrograph"])
             for e in entries}
    remove_other_formats(output_dir, entries, outputs["formats"], project_dir)
    for entry in entries:
        write_micrograph_outputs(output_dir, entry, picks[entry["stem"]], outputs["formats"], project_dir)
    write_combined(output_dir, entries, picks, outputs["formats"], project_dir)
    manifest["outputs"] = {**outputs, "n_picks": int(sum(len(p) for p in picks.values()))}
    main = load_manifest(Path(output_dir) / MANIFEST) if (Path(output_dir) / MANIFEST).is_file() else {
        "micrographs": [], "checkpoint": manifest["checkpoint"], "settings": manifest["settings"]}
    atomic_write_json(Path(output_dir) / MANIFEST, {**main, "outputs": manifest["outputs"]})
    return picks


def manifest_name(shard: tuple[int, int] | None) -> str:
    return MANIFEST if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.json"


def load_manifest(path: Path) -> dict:
    """One manifest file; a one-line InputError where it is unreadable."""
    try:
        manifest = json.loads(path.read_text())
        manifest["micrographs"] = list(manifest["micrographs"])
        _ = manifest["checkpoint"], dict(manifest["settings"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read {path} ({error}); delete the folder {path.parent} (or choose another "
                         f"--output-dir) to pick every micrograph again") from error
    return manifest


def manifest_files(output_dir) -> list[Path]:
    folder = Path(output_dir)
    return [path for path in [folder / MANIFEST, *sorted(folder.glob(SHARD_MANIFESTS))] if path.is_file()]


def read_manifests(output_dir) -> dict | None:
    """The folder's manifests merged (shards' entries together, a done entry before any other of its
    stem, `outputs` from manifest.json); None where there is none. All must agree on checkpoint and settings."""
    files = manifest_files(output_dir)
    if not files:
        return None
    manifests = [load_manifest(path) for path in files]
    first = manifests[0]
    for path, other in zip(files[1:], manifests[1:]):
        if (other["checkpoint"], other["settings"]) != (first["checkpoint"], first["settings"]):
            raise InputError(f"{path} was picked with other settings than {files[0]}; pick every shard with the "
                             f"same command, or delete the folder {output_dir}")
    entries = {}
    for entry in (e for manifest in manifests for e in manifest["micrographs"]):
        if entries.get(entry["stem"], {}).get("status") != "done":
            entries[entry["stem"]] = entry
    outputs = next((m["outputs"] for path, m in zip(files, manifests) if path.name == MANIFEST and "outputs" in m),
                   None)
    merged = {"micrographs": list(entries.values()), "checkpoint": first["checkpoint"], "settings": first["settings"]}
    return merged if outputs is None else {**merged, "outputs": outputs}


def read_manifest(output_dir) -> dict:
    """The folder's merged manifest; a one-line InputError where there is none."""
    manifest = read_manifests(output_dir)
    if manifest is None:
        raise InputError(f"{output_dir} holds no {MANIFEST}: not a folder pick_particles.py wrote; pass its "
                         f"--output-dir")
    return manifest


def open_manifest(output_dir, checkpoint, settings: dict, compared, shard=None) -> tuple[dict, dict]:
    """(this process's manifest, the folder's merged one), new where there are none; existing ones must
    agree on `checkpoint` (a path, or an ensemble's list of paths) and `compared` settings."""
    merged = read_manifests(output_dir)
    fresh = {"micrographs": [], "checkpoint": checkpoint, "settings": settings}
    if merged is None:
        return fresh, {**fresh, "micrographs": []}
    previous = {"checkpoint": merged["checkpoint"], **merged["settings"]}
    current = {"checkpoint": checkpoint, **settings}
    differing = [key for key in ("checkpoint", *compared) if previous.get(key) != current[key]]
    if differing:
        raise InputError(f"{output_dir} holds picks made with other settings ({', '.join(differing)}); "
                         f"use another --output-dir or delete that folder (a new threshold needs no repicking: "
                         f"threshold_picks.py)")
    path = Path(output_dir) / manifest_name(shard)
    own = load_manifest(path) if path.is_file() else fresh
    own["settings"] = merged["settings"] = settings
    return own, merged


def own_files(output_dir, manifest: dict, micrographs=()) -> set[str]:
    """Names picking may overwrite in its output folder: the manifest, combined files, lock, histogram, and
    the candidates, per-micrograph files (every format) and overlays of the micrographs the manifest lists
    (a micrograph is listed as started before its files are written), the candidates of the micrographs this
    run picks (`micrographs`, entries {stem}: another shard may be writing them now), their folders and
    temporary names."""
    names = {MANIFEST, LOCK_FILE, HISTOGRAM, CANDIDATES, "overlays", *COMBINED.values()}
    names |= {f"{CANDIDATES}/{entry['stem']}.npy" for entry in micrographs}
    project_dir = manifest["settings"]["relion_project_dir"]
    for entry in manifest["micrographs"]:
        files = per_micrograph_files(output_dir, entry, FORMATS, project_dir).values()
        names |= {path.relative_to(output_dir).as_posix() for path in files}
        names |= {parent.as_posix() for path in files for parent in path.relative_to(output_dir).parents}
        names |= {f"{CANDIDATES}/{entry['stem']}.npy", f"overlays/{entry['stem']}.png"}
    return names | {name + ".tmp" for name in names}


def check_own_folder(output_dir, manifest: dict, micrographs=()) -> None:
    """Refuse an output folder holding files picking did not write (labels, say): they could be overwritten.
    `micrographs` as `own_files`."""
    ours = own_files(output_dir, manifest, micrographs)
    found = [path.relative_to(output_dir).as_posix() for path in Path(output_dir).rglob("*")]
    shard_files = [SHARD_MANIFESTS, SHARD_MANIFESTS + ".tmp", LOCK_FILE + ".shard-*-of-*"]
    foreign = sorted(name for name in found if name not in ours and name != "."
                     and not any(fnmatch.fnmatchcase(name, pattern) for pattern in shard_files))
    if foreign:
        raise InputError(f"{output_dir} holds files that picking did not write (e.g. {foreign[0]}); choose an "
                         f"empty or new --output-dir so they are not overwritten")


def is_done(output_dir, manifest: dict, stem: str) -> bool:
    """True where the manifest lists `stem` as done and its candidates exist."""
    entry = next((e for e in manifest["micrographs"] if e["stem"] == stem), None)
    return entry is not None and entry["status"] == "done" and candidates_path(output_dir, stem).is_file()


def record(output_dir, manifest: dict, entry: dict, shard=None, merged: dict | None = None) -> None:
    """Put `entry` in this process's manifest (and the `merged` view), replacing the one of the same stem,
    and rewrite this process's manifest file."""
    for view in (manifest, merged) if merged is not None else (manifest,):
        entries = view["micrographs"]
        index = next((i for i, e in enumerate(entries) if e["stem"] == entry["stem"]), len(entries))
        entries[index:index + 1] = [entry]
    atomic_write_json(Path(output_dir) / manifest_name(shard), manifest)
