"""The driver both preprocessors share: read micrographs in parallel, sample patches, write chunks.

A tool hands over its micrograph records, its `PreprocessingFacts` and a picklable `sample_fn(image,
particles_xy, truth_xy, known_negative_xy, rng, train=bool) -> (samples, stats)` working in rescaled
pixels. Micrographs are processed by a process pool (workers.py) and consumed strictly in order, so the
chunks do not depend on the worker count; each micrograph's RNG is seeded by (seed, its index in the
whole dataset), so shards and resumes agree.
"""
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.files import atomic_write_json, bytes_on_disk, folder_lock, human_bytes, peak_rss_mb
from datasets.chunks.format import METADATA, PreprocessingFacts
from datasets.chunks.writer import ChunkStore, SplitStream, prepare_output_dir
from datasets.geometry import to_original, to_scaled
from datasets.io.coordinates import drop_outside
from datasets.io.layout import SPLITS, dataset_diameter
from datasets.io.micrographs import dataset_pixel_size, prepare_micrograph, read_micrograph
from datasets.preprocessing.workers import ordered_results


def preprocessing_facts(pre, records) -> PreprocessingFacts:
    """The facts of a run with preprocessing settings `pre` over `records`: the pixel size (the user's,
    else the MRC headers'), the particle diameter (the user's in px or Å, else the annotations' median)
    and the scale that makes it `target_diameter` px."""
    pixel_size = dataset_pixel_size([r.path for r in records], pre["pixel_size"])
    diameter = dataset_diameter(records, particle_diameter_px(pre, pixel_size))
    scale = 1.0 if pre["native_resolution"] else pre["target_diameter"] / diameter
    return PreprocessingFacts(patch_size=pre["patch_size"], particle_diameter_px=diameter, scale=scale,
                              clip_sigma=pre["clip_sigma"], pixel_size_angstrom=pixel_size)


def describe_facts(facts: PreprocessingFacts) -> str:
    """One line for the preprocessors' start: diameter, pixel size (or that it is unknown) and scale."""
    size = (f"{facts.particle_diameter_angstrom:.0f} Å at {facts.pixel_size_angstrom:g} Å/px"
            if facts.pixel_size_angstrom else "pixel size unknown: sizes stay in pixels")
    return (f"particle diameter {facts.particle_diameter_px:g} px ({size}), scale {facts.scale:.4f} "
            f"(particles become {facts.particle_diameter_px * facts.scale:.1f} px)")


def particle_diameter_px(pre, pixel_size):
    """The user's particle diameter in original px: `particle_diameter` as given, or
    `particle_diameter_angstrom` over the pixel size; None when neither is set."""
    angstrom = pre["particle_diameter_angstrom"]
    if angstrom is None:
        return pre["particle_diameter"]
    if pre["particle_diameter"] is not None:
        raise InputError(f"--particle-diameter {pre['particle_diameter']:g} px and --particle-diameter-angstrom "
                         f"{angstrom:g} both given; pass one of them")
    if not angstrom > 0:
        raise InputError(f"--particle-diameter-angstrom {angstrom:g} must be positive")
    if pixel_size is None:
        raise InputError(f"--particle-diameter-angstrom {angstrom:g} needs the pixel size, and the micrographs' "
                         f"headers give none; pass --pixel-size (Å/px) or --particle-diameter in px")
    return angstrom / pixel_size


def _xy(particles):
    return None if particles is None else particles[:, :2]


def process_micrograph(record, *, facts, seed, sample_fn):
    """Read, rescale, normalise and sample one micrograph; a decode failure comes back as an error."""
    try:
        image = read_micrograph(record.path)
    except InputError as exc:
        return {"error": str(exc)}
    height, width = image.shape
    prepared, scale_xy = prepare_micrograph(image, facts.scale, facts.clip_sigma)
    particles, n_dropped = drop_outside(record.particles, width, height)
    truth = None if record.truth is None else drop_outside(record.truth, width, height)[0]
    rejected = None if record.known_negatives is None else drop_outside(record.known_negatives, width, height)[0]
    rng = np.random.default_rng([seed, record.index])
    scaled = [None if p is None else to_scaled(_xy(p), scale_xy) for p in (particles, truth, rejected)]
    samples, stats = sample_fn(prepared, scaled[0], scaled[1], scaled[2], rng, train=record.split == "train")
    samples["xy"] = np.rint(to_original(samples["xy"], scale_xy)).astype(np.int32)
    info = {"width": width, "height": height, "scale_x": scale_xy[0], "scale_y": scale_xy[1],
            "n_particles": int(len(particles)), "n_dropped": int(n_dropped),
            "n_samples": int(len(samples["label"])), **stats}
    return {"samples": samples, "info": info}


def _consume(store, stream, table_row, position, result, strict):
    entry = store.metadata["micrographs"][table_row]
    if "error" in result:
        if strict:
            raise InputError(result["error"] + " (--strict)")
        warnings.warn(result["error"])
        entry.update(status="skipped", reason=result["error"])
        return
    entry.update(status="done", **result["info"])
    samples = result["samples"]
    samples["micrograph"] = np.full(len(samples["label"]), table_row, dtype=np.int32)
    stream.feed(position, samples)


def run_preprocessing(tool, config, records, sample_fn, *, output_dir, **options):
    """Write every split's chunks into output_dir (resuming where it stopped) and return a summary.

    The folder is locked while it is written: a second writer is refused, naming this one."""
    with folder_lock(output_dir, tool):
        return _write_chunks(tool, config, records, sample_fn, output_dir=output_dir, **options)


def _write_chunks(tool, config, records, sample_fn, *, facts, output_dir, resume, num_workers, strict, priors_fn):
    start = time.time()
    table = [{"index": r.index, "path": str(Path(r.path).resolve()), "stem": r.stem, "split": r.split,
              "status": "pending"} for r in records]
    metadata = prepare_output_dir(output_dir, tool, config, facts, resume)
    if metadata is not None and [m["path"] for m in metadata["micrographs"]] != [t["path"] for t in table]:
        raise InputError(f"the micrographs found now differ from those {output_dir} was started with; "
                         f"use --no-resume to start over or another --output-dir")
    if metadata is not None and metadata["config"] != config:  # only settings of pi differ: recompute it
        metadata["config"] = config
        if metadata.get("complete"):
            metadata["priors"] = priors_fn(metadata)
            atomic_write_json(Path(output_dir) / METADATA, metadata)
    if metadata is not None and metadata.get("complete"):
        return summarize(metadata, output_dir, start, already_complete=True)
    store = ChunkStore(output_dir, tool, config, facts, table, metadata)
    worker = partial(process_micrograph, facts=facts, seed=config["seed"], sample_fn=sample_fn)
    rows = {r.index: row for row, r in enumerate(records)}
    streams = {split: SplitStream(store, split) for split in SPLITS}
    sizes = {split: sum(r.split == split for r in records) for split in SPLITS}
    jobs = []  # (split, position in split, record) still to do, in the order chunks are written
    for split in SPLITS:
        first = sizes[split] if streams[split].state["complete"] else streams[split].resume_position
        jobs += [(split, position, r) for position, r in enumerate(r for r in records if r.split == split)
                 if position >= first]
    with tqdm(total=len(records), initial=len(records) - len(jobs), desc=f"{tool}", unit="micrograph") as bar:
        results = ordered_results(worker, [record for _, _, record in jobs], num_workers)
        for (split, position, record), result in zip(jobs, results):
            _consume(store, streams[split], rows[record.index], position, result, strict)
            if position == sizes[split] - 1:
                streams[split].finish(sizes[split])
            bar.update(1)
    for split in SPLITS:  # splits with no micrographs left to read
        if not streams[split].state["complete"]:
            streams[split].finish(sizes[split])
    if not streams["train"].state["count"]:
        skipped = [m for m in store.metadata["micrographs"] if m.get("status") == "skipped"]
        why = f" ({len(skipped)} unreadable, e.g. {skipped[0]['reason']})" if skipped else ""
        raise InputError(f"no training patches were written to {output_dir}{why}; check --data-root and the "
                         f"train micrographs, then rerun")
    store.metadata["priors"] = priors_fn(store.metadata)
    store.metadata["complete"] = True
    store.save(wait=True)
    return summarize(store.metadata, output_dir, start)


def summarize(metadata, output_dir, start, already_complete=False):
    """Counts per split and sample type, bytes on disk, seconds, peak memory."""
    files = [Path(output_dir) / c["file"] for s in metadata["splits"].values() for c in s["chunks"]]
    skipped = [m for m in metadata["micrographs"] if m.get("status") == "skipped"]
    return {
        "output_dir": str(output_dir), "already_complete": already_complete,
        "micrographs": len(metadata["micrographs"]), "skipped_micrographs": len(skipped),
        "micrographs_per_split": {split: sum(m["split"] == split for m in metadata["micrographs"])
                                  for split in SPLITS},
        "dropped_particles": sum(m.get("n_dropped", 0) for m in metadata["micrographs"]),
        "splits": {name: {"count": s["count"], "chunks": len(s["chunks"]), **s["counts"]}
                   for name, s in metadata["splits"].items()},
        "priors": metadata["priors"], "bytes": bytes_on_disk(files), "seconds": time.time() - start,
        "peak_rss_mb": peak_rss_mb()}


def print_summary(summary):
    state = "already complete, nothing to do" if summary["already_complete"] else "done"
    print(f"\n{summary['output_dir']}: {state}")
    print(f"  micrographs: {summary['micrographs']} ({summary['skipped_micrographs']} skipped, unreadable)")
    print(f"  particles outside their micrograph (dropped): {summary['dropped_particles']}")
    for split, counts in summary["splits"].items():
        parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k not in ("count", "chunks") and v)
        print(f"  {split:5s}: {counts['count']:,} patches in {counts['chunks']} chunk(s) ({parts})")
    for key, value in summary["priors"].items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"  on disk: {human_bytes(summary['bytes'])}; {summary['seconds']:.1f} s; "
          f"peak memory {summary['peak_rss_mb']:.0f} MB")
