"""RELION STAR files that list other files, and the pixel size of their optics block.

- `micrographs_from_star`: the micrographs of a `micrographs.star` / `micrographs_ctf.star`
  (`data_micrographs`: `_rlnMicrographName`), with each one's pixel size.
- `coordinate_files`: the per-micrograph coordinate files of a job's `autopick.star` / `manualpick.star`
  (RELION 3.2+: `data_coordinate_files`: `_rlnMicrographName`, `_rlnMicrographCoordinates`).
- `read_star_pixel_size`, `row_pixel_sizes`: Å per micrograph pixel from `data_optics`:
  `_rlnMicrographPixelSize`, else `_rlnImagePixelSize` (the particle images' pixel, which is the
  micrographs' when particles were extracted without rescaling), per `_rlnOpticsGroup`.

RELION names files relative to its project folder, the folder it runs in (e.g.
`MotionCorr/job002/Movies/mic_001.mrc`, listed in `<project>/CtfFind/job003/micrographs_ctf.star`).
A listed relative path is looked for under, in order: `project_dir` when given; the project folder
guessed from the job folder (two levels above `<JobType>/jobNNN/`); the STAR file's own folder and
every folder above it; the current folder. Absolute paths are taken as they are.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from common.errors import InputError

RELION_JOB = re.compile(r"^job\d+$")
PIXEL_SIZE_COLUMNS = ("rlnMicrographPixelSize", "rlnImagePixelSize")
MICROGRAPH_NAME = "rlnMicrographName"
MICROGRAPH_COORDINATES = "rlnMicrographCoordinates"
COORDINATE_LIST_COLUMNS = (MICROGRAPH_NAME, MICROGRAPH_COORDINATES)


def read_star_blocks(path, kind="RELION star"):
    """Every data block of a STAR file: name -> DataFrame (a loop) or dict (key-value pairs)."""
    if not Path(path).is_file():
        raise InputError(f"{kind} file {path} not found; check the path")
    try:
        return starfile.read(path, always_dict=True)
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())
        raise InputError(f"cannot read {kind} file {path}: {reason}; export it again") from error


def describe_blocks(blocks):
    """The blocks of a STAR file for a message: 'data_optics, data_micrographs' or 'no data blocks'."""
    return ", ".join(f"data_{name}" for name in blocks) or "no data blocks"


def loop_with(blocks, columns):
    """The first loop holding every one of `columns`, or None."""
    return next((block for block in blocks.values()
                 if isinstance(block, pd.DataFrame) and set(columns) <= set(block)), None)


def optics_pixel_sizes(blocks) -> dict[int, float]:
    """Optics group -> Å per micrograph pixel, from `data_optics` ({} where it gives none)."""
    optics = blocks.get("optics")
    optics = pd.DataFrame([optics]) if isinstance(optics, dict) else optics
    if not isinstance(optics, pd.DataFrame) or "rlnOpticsGroup" not in optics:
        return {}
    column = next((name for name in PIXEL_SIZE_COLUMNS if name in optics), None)
    if column is None:
        return {}
    groups = pd.to_numeric(optics["rlnOpticsGroup"], errors="coerce")
    sizes = pd.to_numeric(optics[column], errors="coerce")
    return {int(group): float(size) for group, size in zip(groups, sizes)
            if np.isfinite(group) and np.isfinite(size) and size > 0}


def row_pixel_sizes(blocks, rows) -> np.ndarray:
    """Å per micrograph pixel for each row of the loop `rows`, through its `_rlnOpticsGroup` (the only
    optics group where the loop has no such column); NaN where unknown."""
    sizes = optics_pixel_sizes(blocks)
    if "rlnOpticsGroup" in rows:
        groups = pd.to_numeric(rows["rlnOpticsGroup"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        groups = np.full(len(rows), next(iter(sizes)) if len(sizes) == 1 else np.nan)
    return np.array([sizes.get(int(group), np.nan) if np.isfinite(group) else np.nan for group in groups],
                    dtype=np.float64)


def read_star_pixel_size(path) -> float | None:
    """Å per micrograph pixel from a STAR file's `data_optics` block; None where it gives none. An
    InputError where its optics groups differ by more than 1% (one number would be wrong for some)."""
    sizes = sorted(set(optics_pixel_sizes(read_star_blocks(path)).values()))
    if not sizes:
        return None
    if sizes[-1] > 1.01 * sizes[0]:
        raise InputError(f"the optics groups of {path} have different pixel sizes ({sizes[0]:g} to {sizes[-1]:g} "
                         f"Å/px); pass --pixel-size, or split the STAR file by optics group")
    return float(np.median(sizes))


def search_folders(star_path, project_dir=None) -> list[Path]:
    """The folders a path listed in `star_path` may be relative to, most likely first."""
    folder = Path(star_path).absolute().parent
    guessed = [folder.parent.parent] if RELION_JOB.match(folder.name) else []
    given = [Path(project_dir).absolute()] if project_dir is not None else []
    return list(dict.fromkeys(given + guessed + [folder, *folder.parents, Path.cwd()]))


def find_listed_file(name, star_path, folders, what) -> Path:
    """The file that `star_path` lists as `name`, under the first of `folders` that holds it."""
    listed = Path(str(name).strip())
    found = [listed] if listed.is_absolute() else [folder / listed for folder in folders]
    for path in found:
        if path.is_file():
            return path
    folder = Path(star_path).absolute().parent
    first = f"{folders[0]}, " if folders[0] != folder else ""
    where = "" if listed.is_absolute() else (f" under {first}{folder} or any folder above it, or the current "
                                             f"folder {Path.cwd()}")
    raise InputError(f"{what} {name} listed in {star_path} not found{where}; run from the RELION project "
                     f"folder, or fix the paths in {Path(star_path).name}")


def coordinate_files(star_path, listing) -> list[tuple[str, Path]]:
    """(micrograph name, its coordinate file) for each row of a `data_coordinate_files` loop."""
    folders = search_folders(star_path)
    return [(micrograph, find_listed_file(coordinates, star_path, folders, "coordinate file"))
            for micrograph, coordinates in zip(listing[MICROGRAPH_NAME], listing[MICROGRAPH_COORDINATES])]


@dataclass(frozen=True)
class MicrographList:
    """The micrographs a RELION STAR file lists, and each one's pixel size (Å/px; None where unknown)."""
    paths: list[Path]
    pixel_sizes: list[float | None]

    @property
    def pixel_size(self) -> float | None:
        """The pixel size of every micrograph; None where one is unknown or they differ by over 1%."""
        if not self.pixel_sizes or None in self.pixel_sizes:
            return None
        low, high = min(self.pixel_sizes), max(self.pixel_sizes)
        return float(np.median(self.pixel_sizes)) if high <= 1.01 * low else None


def micrographs_from_star(path, project_dir=None) -> MicrographList:
    """The micrographs of a RELION micrographs.star / micrographs_ctf.star (each once, in order), found
    as the module docstring says; a one-line InputError names the first one missing."""
    path = Path(path)
    blocks = read_star_blocks(path)
    listing = blocks.get("micrographs")
    if not isinstance(listing, pd.DataFrame) or MICROGRAPH_NAME not in listing:
        listing = loop_with(blocks, [MICROGRAPH_NAME])
    if listing is None:
        raise InputError(f"{path} lists no micrographs: no loop with _rlnMicrographName (found "
                         f"{describe_blocks(blocks)}); pass a RELION micrographs.star or micrographs_ctf.star")
    listing = listing.drop_duplicates(MICROGRAPH_NAME)
    folders = search_folders(path, project_dir)
    paths = [find_listed_file(name, path, folders, "micrograph") for name in listing[MICROGRAPH_NAME]]
    sizes = row_pixel_sizes(blocks, listing)
    return MicrographList(paths, [float(size) if np.isfinite(size) else None for size in sizes])
