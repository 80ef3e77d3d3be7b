"""Particle coordinates: one in-memory table, read from and written to the common pickers' formats.

A `ParticleTable` maps a micrograph stem (file name without directory and extension) to a
float64 array of shape (N, 4) with the columns `COLUMNS` = x, y, diameter, score: particle centres
in pixels of the original micrograph (x = column, y = row, row 0 first as read), the particle
diameter in pixels (NaN where the format stores none) and a picker's score (NaN where none).

Formats (converted to centres here, at the edge, and nowhere else):
  .json  CryoTransformer COCO: bbox [x - D/2, y - D/2, D, D]
  .csv   CryoPPP: X-Coordinate, Y-Coordinate, Diameter (optional), Confidence Score (optional)
  .star  RELION: _rlnCoordinateX/Y centres (per-micrograph autopick/manualpick files, particles.star
         with its refined offsets _rlnOriginX/YAngst subtracted), _rlnMicrographName,
         _rlnAutopickFigureOfMerit; or a job's autopick.star / manualpick.star listing those files
  .box   EMAN: box corner x, y, box width, height
  .cbox  crYOLO: box corner _CoordinateX/Y, _Width, _Height, _EstWidth/_EstHeight, _Confidence
  .cs    cryoSPARC particles: location/center_x_frac, center_y_frac x location/micrograph_shape
  .txt   Topaz (also .tsv): image_name, x_coord, y_coord, score (optional)
A folder is read as a RELION job folder (its autopick.star / manualpick.star, or the files its
coords_suffix_<name>.star names), else as its coordinate files, else as the RELION pick files in its
subfolders (`_read_folder`). Writers replace their file atomically (`common.files.atomic_write`).
"""
import csv
import json
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import starfile

from common.errors import InputError
from common.files import atomic_write, atomic_write_text
from datasets.io.micrographs import MICROGRAPH_EXTENSIONS
from datasets.io.star_lists import (COORDINATE_LIST_COLUMNS, coordinate_files, describe_blocks, loop_with,
                                    read_star_blocks, row_pixel_sizes)

COLUMNS = ("x", "y", "diameter", "score")
ParticleTable = dict[str, np.ndarray]
RELION_PICK_SUFFIX = re.compile(r"_(autopick|manualpick)$")
CRYOPPP_COLUMNS = ("X-Coordinate", "Y-Coordinate", "Diameter", "Confidence Score")
TOPAZ_COLUMNS = ("image_name", "x_coord", "y_coord", "score")
CBOX_COLUMNS = ("CoordinateX", "CoordinateY", "Width", "Height", "Confidence", "EstWidth", "EstHeight")
CS_LOCATION_FIELDS = ("location/micrograph_path", "location/micrograph_shape", "location/center_x_frac",
                      "location/center_y_frac")
CSDAT_MAGIC = b"\x94CSDAT"  # cryosparc-tools' compressed .cs (its default stays numpy's .npy format)
RELION_LISTS = ("autopick.star", "manualpick.star")
RELION_SUFFIX_FILE = re.compile(r"^coords_suffix_(?P<suffix>.+)\.star$")
RELION_BOOKKEEPING = {"job.star", "job_pipeline.star", "default_pipeline.star", "relion_output_nodes.star",
                      "note.txt"}


def make_particles(x, y, diameter=np.nan, score=np.nan):
    """An (N, 4) float64 particle array from centres, diameters and scores (scalars broadcast)."""
    columns = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64).ravel() for c in (x, y, diameter, score)))
    return np.column_stack(columns)


def micrograph_stem(name):
    """The micrograph key for a file name or path: no directory, no micrograph extension."""
    name = PurePath(str(name)).name
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in MICROGRAPH_EXTENSIONS else name


def _split_by_micrograph(stems, particles):
    names, index = np.unique(np.asarray(stems, dtype=str), return_inverse=True)
    order = np.argsort(index, kind="stable")
    bounds = np.cumsum(np.bincount(index, minlength=len(names)))[:-1]
    return dict(zip(names.tolist(), np.split(particles[order], bounds)))


def _stack(table):
    stems = np.repeat(list(table), [len(particles) for particles in table.values()])
    particles = np.concatenate([make_particles([], [])] + list(table.values()))
    return stems, particles


def _cannot_read(path, kind, reason, fix):
    reason = " ".join(str(reason).split())
    return InputError(f"cannot read {kind} file {path}: {reason}; {fix}")


def _numbers(frame, column, path, kind, required):
    """Column `column` of `frame` as float64; a non-number (or a blank where required) is an error."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & (frame[column].notna().to_numpy() | required)
    if bad.any():
        row = int(np.argmax(bad))
        raise _cannot_read(path, kind, f"data row {row + 1} has {column} = {frame[column].iloc[row]!r}",
                           "fix or delete that row")
    return values


def _read_table(path, kind, required, fix, **read_options):
    try:
        frame = pd.read_csv(path, **read_options)
    except (OSError, ValueError) as error:
        raise _cannot_read(path, kind, error, fix) from error
    frame.columns = frame.columns.str.strip()
    missing = [column for column in required if column not in frame]
    if missing:
        raise _cannot_read(path, kind, f"missing column(s) {', '.join(missing)}", fix)
    return frame


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise _cannot_read(path, "COCO", error, "pass a COCO instances_*.json file") from error


def _coco_images(path, coco):
    images = {}
    for image in coco["images"]:
        stem = micrograph_stem(image["file_name"])
        if stem in images:
            raise _cannot_read(path, "COCO", f"two images are named {stem}",
                               "give each micrograph a unique name")
        images[stem] = {key: image[key] for key in ("file_name", "width", "height", "id")}
    return images


def _coco_particles(path, annotations, stem_of_id):
    try:
        stems = [stem_of_id[annotation["image_id"]] for annotation in annotations]
    except KeyError as error:
        raise _cannot_read(path, "COCO", f"an annotation refers to image_id {error} not listed in 'images'",
                           "add the image or remove its annotations") from error
    try:
        boxes = np.array([annotation["bbox"] for annotation in annotations], dtype=np.float64).reshape(-1, 4)
    except ValueError as error:
        raise _cannot_read(path, "COCO", f"a bbox is not 4 numbers ({error})",
                           "fix that annotation") from error
    crowd = np.array([annotation.get("iscrowd", 0) == 1 for annotation in annotations], dtype=bool)
    score = np.array([annotation.get("score", np.nan) for annotation in annotations], dtype=np.float64)
    x, y, width, height = boxes.T
    keep = ~crowd & ((width > 0) | (height > 0))
    particles = make_particles(x + width / 2, y + height / 2, (width + height) / 2, score)
    return _split_by_micrograph(np.asarray(stems, dtype=str)[keep], particles[keep])


def read_coco(json_path):
    """CryoTransformer COCO json -> (particles per micrograph, {stem: file_name/width/height/id}).

    Centre = bbox corner + half its size, diameter = mean of bbox width and height. Dummy boxes
    (iscrowd 1, or width = height = 0) are skipped; every listed image gets an entry.
    """
    path = Path(json_path)
    coco = _load_json(path)
    try:
        images = _coco_images(path, coco)
        stem_of_id = {info["id"]: stem for stem, info in images.items()}
        found = _coco_particles(path, coco["annotations"], stem_of_id)
    except (KeyError, TypeError, IndexError) as error:
        raise _cannot_read(path, "COCO", f"missing or malformed key {error}",
                           "it needs 'images' (id, file_name, width, height) and 'annotations' "
                           "(image_id, bbox)") from error
    empty = make_particles([], [])
    return {stem: found.get(stem, empty) for stem in images}, images


def read_cryoppp_csv(path, micrograph=None):
    """CryoPPP csv (one micrograph, named by `micrograph` or the csv stem) -> ParticleTable.

    A file of numbers only is read by the csv module (a ninth of pandas' time: thousands of label files
    are read before a resumed run can go on); anything else goes through pandas and its messages."""
    path = Path(path)
    particles = _cryoppp_numbers(path)
    if particles is None:
        fix = "it needs a header with X-Coordinate,Y-Coordinate (Diameter, Confidence Score optional)"
        frame = _read_table(path, "CryoPPP csv", CRYOPPP_COLUMNS[:2], fix, skipinitialspace=True)
        particles = make_particles(*(_numbers(frame, column, path, "CryoPPP csv", required=index < 2)
                                     for index, column in enumerate(CRYOPPP_COLUMNS)))
    return {micrograph or path.stem: particles}


def _cryoppp_numbers(path):
    """The particles of a CryoPPP csv whose header names distinct columns, X and Y among them, and whose
    every row is that many numbers with X and Y given; None for any other file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    header = [name.strip() for name in rows[0]] if rows else []
    if len(set(header)) != len(header) or not set(CRYOPPP_COLUMNS[:2]) <= set(header):
        return None
    try:
        values = np.array(rows[1:], dtype=np.float64).reshape(-1, len(header))
    except ValueError:
        return None
    columns = [values[:, header.index(c)] if c in header else np.nan for c in CRYOPPP_COLUMNS]
    return None if np.isnan(columns[0]).any() or np.isnan(columns[1]).any() else make_particles(*columns)


def _coordinate_loop(path, blocks):
    block = loop_with(blocks, ("rlnCoordinateX", "rlnCoordinateY"))
    if block is None:
        raise _cannot_read(path, "RELION star", f"no loop with _rlnCoordinateX and _rlnCoordinateY (found "
                           f"{describe_blocks(blocks)})", "pass a particles.star, a job's autopick.star or "
                           "manualpick.star, or a per-micrograph coordinate .star")
    return block


def _origin_offsets(path, blocks, block):
    """(x, y) refined offsets in micrograph px: _rlnOriginX/YAngst over the micrograph pixel size of the
    particle's optics group (RELION 3.1+), old _rlnOriginX/Y in px (particle-image px, the micrographs'
    where extraction did not rescale), or 0 where the loop has none."""
    kind = "RELION star"
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(block):
        pixel_size = row_pixel_sizes(blocks, block)
        if np.isnan(pixel_size).any():
            raise _cannot_read(path, kind, "it has _rlnOriginXAngst/YAngst but data_optics gives no "
                               "_rlnMicrographPixelSize or _rlnImagePixelSize for every _rlnOpticsGroup",
                               "keep the data_optics block RELION wrote")
        return [_numbers(block, f"rlnOrigin{axis}Angst", path, kind, required=True) / pixel_size for axis in "XY"]
    if {"rlnOriginX", "rlnOriginY"} <= set(block):
        return [_numbers(block, f"rlnOrigin{axis}", path, kind, required=True) for axis in "XY"]
    return [0.0, 0.0]


def _star_particles(path, blocks, micrograph):
    """The particles of a coordinate loop: centre = _rlnCoordinateX/Y - origin offset, where RELION
    re-extracts a refined particle (src/preprocessing.cpp, --recenter: xcoord -= xoff, in micrograph px,
    rounded there and exact here)."""
    block = _coordinate_loop(path, blocks)
    kind = "RELION star"
    x, y = (_numbers(block, f"rlnCoordinate{axis}", path, kind, required=True) for axis in "XY")
    offset_x, offset_y = _origin_offsets(path, blocks, block)
    score = _numbers(block, "rlnAutopickFigureOfMerit", path, kind, required=False)
    particles = make_particles(x - offset_x, y - offset_y, np.nan, score)
    if "rlnMicrographName" in block:
        return _split_by_micrograph([micrograph_stem(name) for name in block["rlnMicrographName"]], particles)
    return {micrograph or RELION_PICK_SUFFIX.sub("", path.stem): particles}


def _merge(table, more):
    """Add the particles of `more` to `table` (in place), micrograph by micrograph."""
    for stem, particles in more.items():
        table[stem] = np.concatenate([table[stem], particles]) if stem in table else particles


def read_star(path, micrograph=None):
    """RELION star -> ParticleTable; diameters are NaN.

    A coordinate loop (old numbered columns or 3.1+ blocks: per-micrograph autopick/manualpick files,
    particles.star) gives centres _rlnCoordinateX/Y less the refined offset (`_origin_offsets`); its
    micrographs are named by _rlnMicrographName, else by `micrograph`, else by the star file's stem
    without RELION's _autopick / _manualpick suffix. A `data_coordinate_files` list (a job's
    autopick.star / manualpick.star) gives the particles of every file it lists, each named by its
    _rlnMicrographName (paths found as `datasets.io.star_lists` says).
    """
    path = Path(path)
    blocks = read_star_blocks(path)
    listing = loop_with(blocks, COORDINATE_LIST_COLUMNS)
    if listing is None:
        return _star_particles(path, blocks, micrograph)
    table = {}
    for name, coordinates in coordinate_files(path, listing):
        _merge(table, _star_particles(coordinates, read_star_blocks(coordinates), micrograph_stem(name)))
    return table


def read_box(path, micrograph=None):
    """EMAN .box (one micrograph, named by `micrograph` or the file stem) -> ParticleTable.

    Each row is `x y width height` with (x, y) the box corner in the micrograph's own pixel frame.
    The centre is (x + width/2, y + height/2), without flipping y: RELION, cryoSPARC and Topaz
    import .box files this way. The diameter is the mean box side.
    """
    path = Path(path)
    fix = "each line needs x y box_width box_height"
    try:
        text = path.read_text()
        rows = np.loadtxt(text.splitlines(), ndmin=2) if text.strip() else np.zeros((0, 4))
    except (OSError, ValueError) as error:
        raise _cannot_read(path, "EMAN box", error, fix) from error
    if rows.shape[1] < 4:
        raise _cannot_read(path, "EMAN box", f"found {rows.shape[1]} columns", fix)
    x, y, width, height = rows[:, :4].T
    return {micrograph or path.stem: make_particles(x + width / 2, y + height / 2, (width + height) / 2)}


def _optional_numbers(frame, column):
    """Column `column` of `frame` as float64; NaN where absent or not a number (crYOLO writes <NA>)."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)


def _finite_mean(*columns):
    """Row-wise mean of the finite, positive values of `columns`; NaN where a row has none."""
    stack = np.column_stack(columns)
    valid = np.isfinite(stack) & (stack > 0)
    count = valid.sum(axis=1)
    return np.where(count > 0, np.where(valid, stack, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)


def _cbox_rows(path):
    """The boxes of a .cbox as a frame with the STAR column names: the `data_cryolo` loop (crYOLO 1.8+),
    or before 1.8 plain columns x y width height [confidence est_width est_height]."""
    kind, fix = "crYOLO cbox", "pass the .cbox files crYOLO wrote (its CBOX/ folder)"
    blocks = read_star_blocks(path, kind)
    if not blocks:
        try:
            text = path.read_text()
            rows = np.loadtxt(text.splitlines(), ndmin=2) if text.strip() else np.zeros((0, 4))
        except (OSError, ValueError) as error:
            raise _cannot_read(path, kind, error, fix) from error
        if rows.shape[1] < 4:
            raise _cannot_read(path, kind, f"found {rows.shape[1]} columns", "each line needs x y width height")
        return pd.DataFrame(rows[:, :7], columns=CBOX_COLUMNS[:min(rows.shape[1], 7)])
    rows = blocks.get("cryolo")
    if not isinstance(rows, pd.DataFrame) or not set(CBOX_COLUMNS[:4]) <= set(rows):
        raise _cannot_read(path, kind, f"no data_cryolo loop with _CoordinateX _CoordinateY _Width _Height "
                           f"(found {describe_blocks(blocks)})", fix)
    return rows


def read_cbox(path, micrograph=None):
    """crYOLO .cbox (one micrograph, named by `micrograph` or the file stem) -> ParticleTable.

    (_CoordinateX, _CoordinateY) is the box's lower-left corner, as in .box: the centre is corner +
    (_Width, _Height) / 2, y not flipped (crYOLO's own RELION export does the same). The diameter is the
    mean of crYOLO's estimated particle size _EstWidth/_EstHeight, else of the box sides; the score is
    _Confidence. _CoordinateZ (tomograms) is ignored.
    """
    path = Path(path)
    rows = _cbox_rows(path)
    x, y, width, height = (_numbers(rows, column, path, "crYOLO cbox", required=True)
                           for column in CBOX_COLUMNS[:4])
    estimated = _finite_mean(_optional_numbers(rows, "EstWidth"), _optional_numbers(rows, "EstHeight"))
    diameter = np.where(np.isfinite(estimated), estimated, (width + height) / 2)
    particles = make_particles(x + width / 2, y + height / 2, diameter, _optional_numbers(rows, "Confidence"))
    return {micrograph or path.stem: particles}


def _load_cs(path):
    """A .cs file's structured array, read without pickle (a file never runs code here)."""
    kind, fix = "cryoSPARC .cs", "pass a particles .cs that cryoSPARC wrote (numpy format)"
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(len(CSDAT_MAGIC)) == CSDAT_MAGIC
            handle.seek(0)
            particles = None if compressed else np.load(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise _cannot_read(path, kind, error, fix) from error
    if compressed:
        raise _cannot_read(path, kind, "it is in cryosparc-tools' compressed format",
                           "save it again in the default numpy format: Dataset.load(path).save(new_path)")
    if not isinstance(particles, np.ndarray) or particles.dtype.names is None:
        raise _cannot_read(path, kind, "it holds no table of fields", fix)
    return particles


def read_cryosparc_cs(path):
    """cryoSPARC particles .cs -> ParticleTable, named by the stem of location/micrograph_path.

    x = location/center_x_frac x width, y = location/center_y_frac x height, with
    location/micrograph_shape = (height, width) in micrograph px (as cryosparc-tools and pyem's
    csparc2star read it): x = column, y = row. Score: pick_stats/ncc_score where present. Alignment
    shifts are not applied; diameters are NaN.
    """
    path = Path(path)
    particles = _load_cs(path)
    names = particles.dtype.names
    missing = [field for field in CS_LOCATION_FIELDS if field not in names]
    if missing:
        found = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise _cannot_read(path, "cryoSPARC .cs", f"no particle locations ({', '.join(missing)} missing; "
                           f"fields found: {found})", "pass the job's passthrough .cs (e.g. "
                           "J12_passthrough_particles.cs) or an exported particles .cs, which hold location/*")
    shape = particles["location/micrograph_shape"].reshape(len(particles), 2).astype(np.float64)
    if (shape <= 0).any():
        raise _cannot_read(path, "cryoSPARC .cs", "location/micrograph_shape is 0 for some particles",
                           "pass the .cs of a job that ran on micrographs (extract or pick)")
    x = particles["location/center_x_frac"] * shape[:, 1]
    y = particles["location/center_y_frac"] * shape[:, 0]
    score = particles["pick_stats/ncc_score"] if "pick_stats/ncc_score" in names else np.nan
    stems = [micrograph_stem(name) for name in np.char.decode(particles["location/micrograph_path"].astype(bytes))]
    return _split_by_micrograph(stems, make_particles(x, y, np.nan, score))


def _topaz_separator(path):
    """Tabs where the header has one (Topaz writes tabs, and a micrograph name may hold spaces), else any
    run of white space (hand-made files)."""
    try:
        with open(path) as handle:
            header = handle.readline()
    except (OSError, UnicodeDecodeError):
        return r"\s+"  # the reader then names the file and the problem
    return "\t" if "\t" in header else r"\s+"


def read_topaz_txt(path):
    """Topaz picks (tab-separated image_name, x_coord, y_coord[, score]; many micrographs) -> table."""
    path = Path(path)
    kind = "Topaz"
    frame = _read_table(path, kind, TOPAZ_COLUMNS[:3], "it needs a header image_name x_coord y_coord [score]",
                        sep=_topaz_separator(path), dtype={"image_name": str})
    x, y, score = (_numbers(frame, column, path, kind, required=column != "score")
                   for column in TOPAZ_COLUMNS[1:])
    stems = [micrograph_stem(name) for name in frame["image_name"]]
    return _split_by_micrograph(stems, make_particles(x, y, np.nan, score))


_READERS = {
    ".json": lambda path, micrograph: read_coco(path)[0],
    ".csv": read_cryoppp_csv,
    ".star": read_star,
    ".box": read_box,
    ".cbox": read_cbox,
    ".cs": lambda path, micrograph: read_cryosparc_cs(path),
    ".txt": lambda path, micrograph: read_topaz_txt(path),
    ".tsv": lambda path, micrograph: read_topaz_txt(path),
}
COORDINATE_EXTENSIONS = tuple(_READERS)
# a cryoSPARC job folder holds the same particles in several .cs files (main and passthrough)
FOLDER_EXTENSIONS = tuple(extension for extension in COORDINATE_EXTENSIONS if extension != ".cs")


def _read_file(path, micrograph):
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"unknown coordinate format {path}; use one of {', '.join(COORDINATE_EXTENSIONS)}")
    return reader(path, micrograph)


def _relion_pick_files(folder, suffixes):
    """(file, micrograph) for every `<micrograph>_<suffix>.star` anywhere below `folder`."""
    return [(path, path.name[:-len(f"_{suffix}.star")]) for suffix in suffixes
            for path in sorted(folder.rglob(f"*_{suffix}.star")) if not RELION_SUFFIX_FILE.match(path.name)]


def _folder_files(folder):
    """(file, micrograph name or None) to read from a folder, by the first rule that finds files: its
    RELION autopick.star / manualpick.star; the files its RELION 3 coords_suffix_<s>.star names
    (*_<s>.star anywhere below); its own coordinate files (RELION's job bookkeeping aside); the RELION
    *_autopick.star / *_manualpick.star files in its subfolders."""
    lists = [folder / name for name in RELION_LISTS if (folder / name).is_file()]
    if lists:
        return [(lists[0], None)]
    suffixes = sorted(match["suffix"] for path in folder.glob("coords_suffix_*.star")
                      if (match := RELION_SUFFIX_FILE.match(path.name)))
    if suffixes:
        return _relion_pick_files(folder, suffixes)
    own = [(path, None) for path in sorted(folder.iterdir()) if path.is_file()
           and path.suffix.lower() in FOLDER_EXTENSIONS and path.name.lower() not in RELION_BOOKKEEPING]
    return own or _relion_pick_files(folder, ("autopick", "manualpick"))


def _read_folder(folder):
    files = _folder_files(folder)
    if not files:
        raise InputError(f"no coordinate files in {folder}; it needs {', '.join(FOLDER_EXTENSIONS)} files or a "
                         f"RELION job's autopick.star / manualpick.star (pass a cryoSPARC .cs file itself)")
    table = {}
    for file, micrograph in files:
        _merge(table, _read_file(file, micrograph))
    return table


def read_coordinates(path, default_diameter=None, micrograph=None):
    """Particles from one coordinate file (format by extension) or every one in a folder, merged.

    `micrograph` names the micrograph of single-micrograph formats (.csv .box .cbox .star without names).
    A folder is read as `_folder_files` says.
    NaN diameters become `default_diameter` when it is given.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"coordinate file or folder {path} not found; check the path")
    table = _read_folder(path) if path.is_dir() else _read_file(path, micrograph)
    if default_diameter is not None:
        for particles in table.values():
            particles[np.isnan(particles[:, 2]), 2] = default_diameter
    return table


def drop_outside(particles, width, height):
    """(particles whose centre lies in [0, width) x [0, height), number dropped)."""
    x, y = particles[:, 0], particles[:, 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return particles[inside], int(np.count_nonzero(~inside))


def _has_scores(particles):
    return bool(np.isfinite(particles[:, 3]).any())


def write_star(path, table, micrograph_names=None):
    """RELION 3.1 `data_particles` star of centres; the score column only when scores exist."""
    stems, particles = _stack(table)
    names = micrograph_names or {}
    frame = pd.DataFrame({"rlnMicrographName": [names.get(stem, stem) for stem in stems],
                          "rlnCoordinateX": particles[:, 0], "rlnCoordinateY": particles[:, 1]})
    if _has_scores(particles):
        frame["rlnAutopickFigureOfMerit"] = particles[:, 3]
    atomic_write_text(path, starfile.to_string({"particles": frame}, na_rep="nan"))


def write_cryoppp_csv(path, particles):
    """CryoPPP csv of one micrograph's particles; Confidence Score only when scores exist."""
    columns = CRYOPPP_COLUMNS if _has_scores(particles) else CRYOPPP_COLUMNS[:3]
    frame = pd.DataFrame(particles[:, :len(columns)], columns=list(columns))
    with atomic_write(path, "w") as handle:
        frame.to_csv(handle, index=False)


def write_box(path, particles, box_size):
    """EMAN .box of one micrograph: integer box corner (centre - box_size/2) and box size."""
    box = int(round(box_size))
    corners = np.rint(particles[:, :2] - box / 2).astype(np.int64)
    rows = np.column_stack([corners, np.full((len(corners), 2), box)])
    with atomic_write(path) as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter="\t")


def write_topaz_txt(path, table):
    """Topaz picks table: image_name, integer x_coord, y_coord, and score when scores exist."""
    stems, particles = _stack(table)
    frame = pd.DataFrame({"image_name": stems, "x_coord": np.rint(particles[:, 0]).astype(np.int64),
                          "y_coord": np.rint(particles[:, 1]).astype(np.int64)})
    if _has_scores(particles):
        frame["score"] = particles[:, 3]
    with atomic_write(path, "w") as handle:
        frame.to_csv(handle, sep="\t", index=False)


def _coco_annotations(table, images):
    annotations = []
    for stem, particles in table.items():
        if stem not in images:
            raise InputError(f"micrograph {stem} has particles but no image entry; add it to the images")
        if np.isnan(particles[:, 2]).any():
            raise InputError(f"particles of {stem} have no diameter; pass a default diameter")
        for x, y, diameter, score in particles.tolist():
            annotation = {"id": len(annotations) + 1, "image_id": images[stem]["id"], "category_id": 1,
                          "bbox": [x - diameter / 2, y - diameter / 2, diameter, diameter],
                          "area": diameter * diameter, "iscrowd": 0, "segmentation": []}
            if not np.isnan(score):
                annotation["score"] = score
            annotations.append(annotation)
    return annotations


def write_coco(path, table, images):
    """CryoTransformer COCO json; `images` maps stem -> file_name, width, height and (optional) id."""
    images = {stem: {"id": info.get("id", index), "file_name": info["file_name"],
                     "width": info["width"], "height": info["height"]}
              for index, (stem, info) in enumerate(images.items())}
    coco = {"images": list(images.values()), "annotations": _coco_annotations(table, images),
            "categories": [{"id": 1, "name": "particle", "supercategory": ""}]}
    atomic_write_text(path, json.dumps(coco))
