"""Write picks in every coordinate format, the combined COCO file, and the picking manifest.

Per micrograph, in the output folder (each file replaced atomically by `datasets.coordinates`):
  <stem>.star  RELION: _rlnMicrographName (the micrograph's file name), _rlnCoordinateX/Y, and
               _rlnAutopickFigureOfMerit (the logit)
  <stem>.csv   CryoPPP: X-Coordinate, Y-Coordinate, Diameter, Confidence Score (the logit). Always
               written: it is the full-precision record that reruns and the combined COCO file read back
  <stem>.box   EMAN: integer box corner and box size = particle diameter
  <stem>.txt   Topaz: image_name x_coord y_coord score
For all micrographs: `picks.json` (COCO, bbox = diameter square around each centre, `score` = logit),
written at the end; `evaluate_picks.py` reads a folder's STAR files first and only reads .json files
when asked for COCO, and then this is the only one, so nothing is counted twice.
`manifest.json` = {"micrographs": [{"stem", "path", "status": "started" | "done" | "failed", "n_picks",
"width", "height", "seconds" | "reason"}], "checkpoint", "settings"}, rewritten atomically before and
after every micrograph: a micrograph whose entry says done and whose files are all present is not
picked again; only files of listed micrographs are ever overwritten (`own_files`).
"""
import json
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.files import LOCK_FILE, atomic_write_json
from datasets.io.coordinates import (read_cryoppp_csv, write_box, write_coco, write_cryoppp_csv, write_star,
                                     write_topaz_txt)

PER_MICROGRAPH_FORMATS = ("star", "csv", "box", "txt")
FORMATS = (*PER_MICROGRAPH_FORMATS, "coco")
COMBINED_COCO = "picks.json"
MANIFEST = "manifest.json"


def pick_files(output_dir, stem: str, formats) -> dict[str, Path]:
    """Per-micrograph file of each requested format (csv always), keyed by format."""
    wanted = [name for name in PER_MICROGRAPH_FORMATS if name in formats or name == "csv"]
    return {name: Path(output_dir) / f"{stem}.{name}" for name in wanted}


def write_picks(output_dir, stem: str, micrograph_path, particles: np.ndarray, diameter_px: float, formats) -> dict:
    """Write one micrograph's picks (N, 4: x, y, diameter, score) in its per-micrograph formats.

    Diameters are set to `diameter_px`; returns the files written, keyed by format.
    """
    particles = np.array(particles, dtype=np.float64).reshape(-1, 4)
    particles[:, 2] = diameter_px
    files = pick_files(output_dir, stem, formats)
    writers = {
        "star": lambda path: write_star(path, {stem: particles}, {stem: Path(micrograph_path).name}),
        "csv": lambda path: write_cryoppp_csv(path, particles),
        "box": lambda path: write_box(path, particles, diameter_px),
        "txt": lambda path: write_topaz_txt(path, {stem: particles}),
    }
    for name, path in files.items():
        writers[name](path)
    return files


def read_picks_back(output_dir, stem: str) -> np.ndarray:
    """One micrograph's picks (N, 4) from its CryoPPP csv, as written by `write_picks`."""
    return read_cryoppp_csv(Path(output_dir) / f"{stem}.csv", micrograph=stem)[stem]


def write_combined_coco(output_dir, manifest: dict) -> Path:
    """`picks.json`: the picks of every micrograph the manifest lists as done, in one COCO file."""
    done = [entry for entry in manifest["micrographs"] if entry["status"] == "done"]
    table = {entry["stem"]: read_picks_back(output_dir, entry["stem"]) for entry in done}
    images = {entry["stem"]: {"id": index, "file_name": Path(entry["path"]).name, "width": entry["width"],
                              "height": entry["height"]} for index, entry in enumerate(done)}
    path = Path(output_dir) / COMBINED_COCO
    write_coco(path, table, images)
    return path


def open_manifest(output_dir, checkpoint, settings: dict, compared) -> dict:
    """The folder's manifest, or a new one; an existing one must agree on checkpoint and `compared` settings."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return {"micrographs": [], "checkpoint": str(checkpoint), "settings": settings}
    try:
        manifest = json.loads(path.read_text())
        previous = {"checkpoint": manifest["checkpoint"], **manifest["settings"]}
        manifest["micrographs"] = list(manifest["micrographs"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read {path} ({error}); delete the folder {output_dir} (or choose another "
                         f"--output-dir) to pick every micrograph again") from error
    current = {"checkpoint": str(checkpoint), **settings}
    differing = [key for key in ("checkpoint", *compared) if previous.get(key) != current[key]]
    if differing:
        raise InputError(f"{output_dir} holds picks made with other settings ({', '.join(differing)}); "
                         f"use another --output-dir or delete that folder")
    manifest["settings"] = settings
    return manifest


def own_files(manifest: dict) -> set[str]:
    """Names picking may overwrite in its output folder: the manifest, the combined COCO file, the lock,
    the per-micrograph files and overlays of the micrographs the manifest lists (a micrograph is
    listed as started before its files are written), and their temporary names."""
    names = {MANIFEST, COMBINED_COCO, LOCK_FILE, "overlays"}
    for entry in manifest["micrographs"]:
        names |= {f"{entry['stem']}.{name}" for name in PER_MICROGRAPH_FORMATS}
        names.add(f"overlays/{entry['stem']}.png")
    return names | {name + ".tmp" for name in names}


def check_own_folder(output_dir, manifest: dict) -> None:
    """Refuse an output folder holding files picking did not write (labels, say): they could be overwritten."""
    ours = own_files(manifest)
    found = [path.relative_to(output_dir).as_posix() for path in Path(output_dir).rglob("*")]
    foreign = sorted(name for name in found if name not in ours)
    if foreign:
        raise InputError(f"{output_dir} holds files that picking did not write (e.g. {foreign[0]}); choose an "
                         f"empty or new --output-dir so they are not overwritten")


def is_done(output_dir, manifest: dict, stem: str, formats) -> bool:
    """True where the manifest lists `stem` as done and its per-micrograph files all exist."""
    entry = next((e for e in manifest["micrographs"] if e["stem"] == stem), None)
    return (entry is not None and entry["status"] == "done"
            and all(path.is_file() for path in pick_files(output_dir, stem, formats).values()))


def record(output_dir, manifest: dict, entry: dict) -> None:
    """Put `entry` in the manifest (replacing the one of the same stem) and rewrite manifest.json."""
    entries = manifest["micrographs"]
    index = next((i for i, e in enumerate(entries) if e["stem"] == entry["stem"]), len(entries))
    entries[index:index + 1] = [entry]
    atomic_write_json(Path(output_dir) / MANIFEST, manifest)
