"""Scale benchmark: preprocessing, resume and loading far beyond the 20 micrographs measured elsewhere.

    python -m bench.bench_scale --output-dir bench_runs/scale            # 20, 200 and 2,000 micrographs
    python -m bench.bench_scale --output-dir /tmp/scale --quick          # a small version (the test suite's)

Inputs: only the options; the micrographs are generated. Outputs, under --output-dir:
  micrographs/            a pool of --base synthetic micrographs (the bundled generator) replicated with
                          seeded 90-degree rotations, flips and fresh noise, each copy's labels transformed alike
  size_N/                 a dataset of the first N copies (train/val/test 80/10/10, symlinks, CryoPPP csv)
  chunks_N_sliding/, chunks_N_coco/   preprocessing of size N (sliding windows at ratio 1.0; the COCO split)
  scale.json              every figure printed
Printed first: the disk this needs and a time estimate (it refuses when the disk is short). Then, per size
and tool: seconds per micrograph, peak RSS, bytes, chunks, metadata.json's size and the seconds one rewrite
of it takes, and the resume cost after kill -9 at 90% of the micrographs (seconds until the resumed run writes
its first new chunk, beside the seconds one chunk takes to fill). Then, on the largest sliding-window set in
a memory cgroup of 1/--ram-ratio of its size (where the machine lets us make one; else against the RAM),
with the page cache dropped first: each loader mode's samples/s and peak RSS over a pass (or its refusal),
beside the disk's sequential read rate, how many micrographs and chunks a streamed batch draws from, and
--train-steps training steps with the streaming loader, with the epoch time their rate gives.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch
import yaml

from bench.bench_loader import drop_page_cache
from common.errors import InputError, exit_on_input_error
from common.files import (atomic_write_json, bytes_on_disk, human_bytes, memory_available_bytes,
                          memory_cgroup_folders)
from datasets.chunks.format import read_metadata
from datasets.chunks.loader import (MODES, CryoEMChunkedDataset, load_chunk, non_positive_slots, open_chunk_dirs,
                                    positives_per_batch)
from datasets.chunks.stream import ChunkStream
from datasets.io.coordinates import write_cryoppp_csv
from synthetic.simulator import SPECIES_STREAM, SyntheticConfig, generate_micrograph, make_species

REPO = Path(__file__).resolve().parents[1]
TOOLS = {"sliding": ("preprocess_chunked", ["--ratio", "1.0"]), "coco": ("preprocess_coco_full_dataset", [])}
CHILD = ("import importlib, json, resource, sys; sys.path.insert(0, {repo!r})\n"
         "try:\n    result = importlib.import_module(sys.argv[1]).main(sys.argv[2:])\n"
         "    print('SECONDS', result['seconds'] if isinstance(result, dict) and 'seconds' in result else 'nan')\n"
         "finally:\n    print('PEAK_RSS_MB', max(resource.getrusage(w).ru_maxrss for w in "
         "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024)")


def transform(image, xy, turns, flip):
    """`image` rotated by `turns` x 90 degrees (np.rot90) and then mirrored left-right if `flip`, with its
    particle centres `xy` (x = column, y = row) moved alike."""
    height, width = image.shape
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    for _ in range(turns % 4):
        x, y, height, width = y, width - 1 - x, width, height
    if flip:
        x = width - 1 - x
    image = np.rot90(image, turns)
    return np.ascontiguousarray(image[:, ::-1] if flip else image), np.stack([x, y], axis=1)


def build_pool(folder, n_copies, n_base, config, seed=0):
    """`n_copies` micrographs (mrc) and their labels (CryoPPP csv) in `folder`: copy i is base i % n_base,
    transformed by its index and given fresh noise of a tenth of the base's deviation. Returns (stems, mean
    particles per micrograph); copies already written are kept (a rerun resumes)."""
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    species = make_species(np.random.default_rng([config.seed, SPECIES_STREAM]), config)
    bases = [generate_micrograph(config, species, 0, index) for index in range(n_base)]
    stems = [f"copy_{i:05d}" for i in range(n_copies)]
    for i, stem in enumerate(stems):
        if (folder / f"{stem}.mrc").exists():
            continue
        base = bases[i % n_base]
        image, xy = transform(base.image, base.centres[base.labeled], (i // n_base) % 4, (i // (4 * n_base)) % 2)
        image = image + np.random.default_rng([seed, i]).normal(0, 0.1 * base.image.std(), image.shape)
        write_cryoppp_csv(folder / "labels" / f"{stem}.csv",
                          np.column_stack([xy, np.full(len(xy), config.diameter), np.full(len(xy), np.nan)]))
        with mrcfile.new(folder / f"{stem}.tmp.mrc", overwrite=True) as mrc:
            mrc.set_data(image.astype(np.float32))
        os.replace(folder / f"{stem}.tmp.mrc", folder / f"{stem}.mrc")
    return stems, float(np.mean([len(b.centres) for b in bases]))


def dataset_of(pool, stems, folder):
    """A CryoTransformer-layout dataset of `stems` (train/val/test 80/10/10) made of symlinks into `pool`."""
    n_held = max(1, len(stems) // 10)
    splits = {"train": stems[:len(stems) - 2 * n_held], "val": stems[-2 * n_held:-n_held], "test": stems[-n_held:]}
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "particle_coordinates").mkdir(parents=True)
    for split, names in splits.items():
        (folder / split).mkdir()
        for stem in names:
            (folder / split / f"{stem}.mrc").symlink_to(pool / f"{stem}.mrc")
            (folder / "particle_coordinates" / f"{stem}.csv").symlink_to(pool / "labels" / f"{stem}.csv")
    return folder


def tool_command(tool, data_root, output_dir, workers, expected):
    module, extra = TOOLS[tool]
    return [sys.executable, "-c", CHILD.format(repo=str(REPO)), module, "--data-root",
            str(data_root), "--output-dir", str(output_dir), "--num-workers", str(workers),
            "--expected-particles", f"{expected:g}", *extra]


def preprocess(tool, data_root, output_dir, workers, expected):
    """One fresh preprocessing run: seconds, peak RSS, bytes, chunks, metadata.json size and rewrite time."""
    shutil.rmtree(output_dir, ignore_errors=True)
    os.sync()
    done = subprocess.run(tool_command(tool, data_root, output_dir, workers, expected), cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{tool} on {data_root} failed: {done.stderr[-2000:]}")
    metadata_path = output_dir / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    rewrites = []
    for _ in range(3):
        begin = time.perf_counter()
        atomic_write_json(output_dir / "metadata.rewrite.json", metadata)
        rewrites.append(time.perf_counter() - begin)
    (output_dir / "metadata.rewrite.json").unlink()
    chunks = [c for s in metadata["splits"].values() for c in s["chunks"]]
    return {"seconds": child_figure(done.stdout, "SECONDS"), "micrographs": len(metadata["micrographs"]),
            "peak_rss_mb": child_figure(done.stdout, "PEAK_RSS_MB"),
            "bytes": bytes_on_disk(output_dir / c["file"] for c in chunks), "chunks": len(chunks),
            "patches": sum(c["count"] for c in chunks), "chunk_size": metadata["config"]["chunk_size"],
            "metadata_bytes": metadata_path.stat().st_size, "metadata_rewrite_s": float(np.median(rewrites))}


def child_figure(stdout, name):
    """The figure a CHILD process printed as `name value` (None when it printed none)."""
    lines = [line for line in stdout.splitlines() if line.startswith(name + " ")]
    return float(lines[-1].split()[1]) if lines else None


def micrographs_done(output_dir):
    try:
        return json.loads((output_dir / "metadata.json").read_text())["resume"]["micrographs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def chunk_files(output_dir):
    return {p.name for p in output_dir.glob("*_chunk_*.pt")}


def resume_cost(tool, data_root, output_dir, workers, expected, n_micrographs, fraction=0.9):
    """kill -9 a run once `fraction` of the micrographs are recorded done, rerun it: seconds until the rerun
    writes its first new chunk, and whether the resumed folder ends with every micrograph."""
    shutil.rmtree(output_dir, ignore_errors=True)
    command = tool_command(tool, data_root, output_dir, workers, expected)
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    while run.poll() is None and micrographs_done(output_dir) < fraction * n_micrographs:
        time.sleep(0.05)
    if run.poll() is not None:
        return {"killed_at": None, "note": f"finished before {fraction:.0%} was recorded"}
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    killed_at, before = micrographs_done(output_dir), chunk_files(output_dir)
    start = time.perf_counter()
    rerun = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_new = None
    while rerun.poll() is None and first_new is None:
        if chunk_files(output_dir) - before:
            first_new = time.perf_counter() - start
        time.sleep(0.02)
    _, stderr = rerun.communicate()
    if rerun.returncode:
        raise RuntimeError(f"resumed {tool} failed: {stderr[-2000:]}")
    first_new = first_new if first_new is not None else time.perf_counter() - start
    metadata = json.loads((output_dir / "metadata.json").read_text())
    complete = metadata["complete"] and all(m["status"] == "done" for m in metadata["micrographs"])
    return {"killed_at": killed_at, "first_new_chunk_s": first_new, "complete": complete,
            "resumed_s": time.perf_counter() - start}


def memory_cgroup(limit_bytes, name="bench_scale"):
    """A child memory cgroup of this process's own, limited to `limit_bytes` (cgroup v1 or v2): its
    cgroup.procs path, or None where the machine does not let us make one (then RAM is the limit)."""
    for parent, limit_file in memory_cgroup_folders():
        try:
            (parent / name).mkdir(exist_ok=True)
            (parent / name / limit_file).write_text(str(int(limit_bytes)))
            return parent / name / "cgroup.procs"
        except OSError:
            continue
    return None


def drop_caches():
    """Drop the whole page cache where we may (root); say whether it was done (else only the chunk
    files are dropped, with POSIX_FADV_DONTNEED, before each measurement)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1")
        return True
    except OSError:
        return False


def run_in(cgroup_procs, command, timeout):
    """Run `command` (a list) inside the cgroup whose cgroup.procs is given (None: as it is)."""
    def join():
        if cgroup_procs is not None:
            Path(cgroup_procs).write_text(str(os.getpid()))
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, preexec_fn=join)


def loader_pass(chunk_dir, mode, batch_size, max_seconds, split="train"):
    """One pass (at most `max_seconds`) over `split` in loader `mode`, from a cold page cache: samples/s,
    peak RSS, and for the stream how many micrographs and chunks each batch draws from; or its refusal."""
    index = open_chunk_dirs([chunk_dir], split)
    drop_page_cache(index.paths)
    micrograph = torch.cat([load_chunk(p, n, index.patch_size, mmap=True)["micrograph"]
                            for p, n in zip(index.paths, index.counts)])
    def batches():
        if mode == "on_demand":
            yield from (batch["index"] for batch in ChunkStream(index, batch_size, seed=0))
            return
        dataset = CryoEMChunkedDataset([chunk_dir], split, mode)
        for rows in torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).split(batch_size):
            dataset.get_batch(rows)
            yield rows

    start, samples, per_batch = time.perf_counter(), 0, []
    try:
        for rows in batches():
            samples += len(rows)
            chunks = torch.searchsorted(index.starts, rows, right=True) - 1
            per_batch.append((len(micrograph[rows].unique()), len(chunks.unique())))
            if time.perf_counter() - start > max_seconds:
                break
    except InputError as exc:
        return {"mode": mode, "refused": str(exc)}
    seconds = time.perf_counter() - start
    spread = np.array(per_batch)
    return {"mode": mode, "samples": samples, "of": len(index), "samples_per_s": samples / seconds,
            "mb_per_s": samples * index.patch_size ** 2 / 1e6 / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "micrographs_per_batch": float(spread[:, 0].mean()), "chunks_per_batch": float(spread[:, 1].mean())}


LOADER_CHILD = ("import json, sys; sys.path.insert(0, {repo!r}); from bench.bench_scale import loader_pass; "
                "print('RESULT' + json.dumps(loader_pass(*json.loads(sys.argv[1]))))")


def loaders(chunk_dir, cgroup_procs, batch_size, max_seconds):
    """loader_pass of every mode, each in a fresh process in the cgroup, after dropping the page cache."""
    results = []
    for mode in MODES:
        drop_caches()
        child = [sys.executable, "-c", LOADER_CHILD.format(repo=str(REPO)),
                 json.dumps([str(chunk_dir), mode, batch_size, max_seconds])]
        done = run_in(cgroup_procs, child, timeout=3 * max_seconds + 600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
        results.append(json.loads(lines[-1][6:]) if lines else
                       {"mode": mode, "failed": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"})
    return results


DISK_CHILD = ("import sys; sys.path.insert(0, {repo!r}); from bench.bench_loader import disk_sequential_read_mb_s; "
              "print('RESULT', disk_sequential_read_mb_s(sys.argv[1:]))")


def disk_read_mb_s(chunk_dir, cgroup_procs):
    """The disk's sequential read rate over the bytes a pass reads: every train chunk file read start to
    end, in the cgroup, from a dropped page cache."""
    drop_caches()
    paths = sorted(str(p) for p in Path(chunk_dir).glob("train_chunk_*.pt"))
    done = run_in(cgroup_procs, [sys.executable, "-c", DISK_CHILD.format(repo=str(REPO)), *paths], timeout=3600)
    return child_figure(done.stdout, "RESULT")


def training_rate(chunk_dir, cgroup_procs, output_root, steps):
    """`steps` training steps of configs/cpu_benchmark.yaml with the streaming loader, in the cgroup:
    seconds per step, the steps one epoch takes (every unlabeled sample once) and that epoch's time."""
    shutil.rmtree(output_root / "scale_train", ignore_errors=True)
    drop_caches()
    command = [sys.executable, "-c", CHILD.format(repo=str(REPO)), "train_pu_fixed_full",
               "--config", str(REPO / "configs" / "cpu_benchmark.yaml"), "--data-dir", str(chunk_dir),
               "--exp-name", "scale_train", "--output-root", str(output_root), "--device", "cpu",
               "--use-data-prior", "--set", "data.loader_mode=on_demand", f"training.steps_per_epoch={steps}",
               "training.epochs=1", "data.max_eval_samples=2000"]
    start = time.perf_counter()
    done = run_in(cgroup_procs, command, 3600)
    wall = time.perf_counter() - start
    if done.returncode:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip()[-500:]}"}
    results = json.loads((output_root / "scale_train" / "results.json").read_text())
    counts = read_metadata(chunk_dir)["splits"]["train"]["counts"]
    config = yaml.safe_load((output_root / "scale_train" / "config.yaml").read_text())
    batch, data = config["training"]["batch_size"], config["data"]
    slots = batch - positives_per_batch(batch, data["batch_ratio"])
    n_known = counts.get("known_negative", 0)
    n_unlabeled = sum(counts.values()) - counts["labeled_positive"] - n_known
    epoch_steps = non_positive_slots(slots, data["known_negative_share"], n_unlabeled, n_known)[2]
    per_step = results["timings"]["train_seconds"] / results["steps"]
    return {"steps": results["steps"], "seconds_per_step": per_step, "wall_s": wall,
            "peak_rss_mb": child_figure(done.stdout, "PEAK_RSS_MB"), "epoch_steps": epoch_steps,
            "epoch_s": epoch_steps * per_step}


def plan(args, pool, pilot):
    """Disk and time the run needs, from the pilot's figures; InputError when the disk is short."""
    largest = max(args.sizes)
    mic_bytes = (pool / "copy_00000.mrc").stat().st_size
    per_mic = {tool: figures["bytes"] / figures["micrographs"] for tool, figures in pilot.items()}
    needed = largest * (mic_bytes + per_mic["sliding"] + max(per_mic.values()))
    free = shutil.disk_usage(args.output_dir).free
    seconds = sum(sizes * (2 * pilot["sliding"]["seconds"] / pilot["sliding"]["micrographs"]
                           + pilot["coco"]["seconds"] / pilot["coco"]["micrographs"]) for sizes in args.sizes)
    seconds += 3 * min(args.pass_seconds, largest * per_mic["sliding"] / 200e6) + 60
    print(f"needs {human_bytes(needed)} on {args.output_dir} ({human_bytes(free)} free): {largest} micrographs "
          f"of {human_bytes(mic_bytes)}, chunks {human_bytes(per_mic['sliding'])} (sliding) and "
          f"{human_bytes(per_mic['coco'])} (coco) per micrograph; about {seconds / 60:.0f} minutes "
          f"(from a pilot of {pilot['sliding']['micrographs']} micrographs)", flush=True)
    if needed > 0.95 * free:
        sizes = " ".join(map(str, args.sizes))
        raise InputError(f"{args.output_dir}: {human_bytes(needed)} needed for --sizes {sizes}, "
                         f"only {human_bytes(free)} free; choose smaller --sizes or another --output-dir")


def measure_size(args, pool, stems, expected, n):
    """Both tools' preprocessing figures at size n, and the sliding tool's resume cost."""
    data_root = dataset_of(pool, stems[:n], args.output_dir / f"size_{n}")
    row = {}
    for tool in TOOLS:
        row[tool] = preprocess(tool, data_root, args.output_dir / f"chunks_{n}_{tool}", args.num_workers, expected)
        print(f"  {n} micrographs, {tool}: {format_preprocess(row[tool])}", flush=True)
        if tool != "sliding" or n != max(args.sizes):  # the largest sliding set is kept for the loaders
            shutil.rmtree(args.output_dir / f"chunks_{n}_{tool}")
    resume_dir = args.output_dir / f"chunks_{n}_resume"
    row["resume"] = resume_cost("sliding", data_root, resume_dir, args.num_workers, expected, n)
    shutil.rmtree(resume_dir, ignore_errors=True)
    sliding = row["sliding"]
    row["resume"]["chunk_fill_s"] = sliding["seconds"] / sliding["patches"] * min(sliding["chunk_size"],
                                                                                 sliding["patches"])
    print(f"  {n} micrographs, resume after kill -9 at 90%: {format_resume(row['resume'])}", flush=True)
    return row


def format_preprocess(f):
    return (f"{f['seconds'] / f['micrographs']:.3f} s/micrograph, peak RSS {f['peak_rss_mb']:.0f} MB, "
            f"{human_bytes(f['bytes'])} in {f['chunks']} chunks ({f['patches']:,} patches), metadata.json "
            f"{human_bytes(f['metadata_bytes'])} rewritten in {f['metadata_rewrite_s'] * 1e3:.1f} ms")


def format_resume(r):
    if r["killed_at"] is None:
        return r["note"]
    return (f"killed with {r['killed_at']} micrographs recorded; first new chunk after {r['first_new_chunk_s']:.1f} s "
            f"(a chunk takes {r['chunk_fill_s']:.1f} s to fill), finished in {r['resumed_s']:.1f} s, "
            f"{'complete' if r['complete'] else 'INCOMPLETE'}")


def format_loader(r, disk_mb_s):
    if "samples_per_s" not in r:
        return f"{r['mode']:<10} {r.get('refused') or r.get('failed')}"
    return (f"{r['mode']:<10} {r['samples_per_s']:>10,.0f} samples/s = {r['mb_per_s']:>6.0f} MB/s "
            f"({r['mb_per_s'] / disk_mb_s:.2f}x disk) over {r['samples']:,} of {r['of']:,} samples, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB; a batch draws from {r['micrographs_per_batch']:.1f} micrographs, "
            f"{r['chunks_per_batch']:.1f} chunks")


def measure_loading(args, chunk_dir):
    """Loader modes and streamed training on `chunk_dir`, in a memory cgroup of 1/ram_ratio its size."""
    size = sum(p.stat().st_size for p in Path(chunk_dir).glob("train_chunk_*.pt"))
    limit = size / args.ram_ratio if args.ram_ratio else None
    cgroup = memory_cgroup(limit) if limit and limit >= 2 << 30 else None
    memory = limit if cgroup else memory_available_bytes()
    print(f"\nloading {human_bytes(size)} of train chunks ({size / memory:.2f}x the {human_bytes(memory)} of "
          f"{'the memory cgroup' if cgroup else 'memory available'}); page cache "
          f"{'dropped' if drop_caches() else 'of the chunk files dropped (fadvise)'} before each", flush=True)
    disk = disk_read_mb_s(chunk_dir, cgroup)
    print(f"disk sequential read (every train chunk file, in turn): {disk:.0f} MB/s", flush=True)
    modes = loaders(chunk_dir, cgroup, 64, args.pass_seconds)
    for result in modes:
        print("  " + format_loader(result, disk), flush=True)
    train = training_rate(chunk_dir, cgroup, args.output_dir, args.train_steps)
    if cgroup is not None:
        cgroup.parent.rmdir()  # empty now: every process in it has ended
    if "failed" in train:
        print(f"  training (on_demand): {train['failed']}")
    else:
        print(f"  training (on_demand, configs/cpu_benchmark.yaml): {train['seconds_per_step']:.3f} s/step over "
              f"{train['steps']} steps, peak RSS {train['peak_rss_mb']:.0f} MB; an epoch ({train['epoch_steps']:,} "
              f"steps) at that rate: {train['epoch_s'] / 60:.1f} min")
    return {"train_bytes": size, "memory_bytes": memory, "cgroup": bool(cgroup), "disk_mb_s": disk,
            "modes": modes, "training": train}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("bench_runs/scale"), help="where everything goes")
    parser.add_argument("--sizes", type=int, nargs="+", help="micrographs per size (default 20 200 2000)")
    parser.add_argument("--base", type=int, default=16, help="distinct generated micrographs the copies come from")
    parser.add_argument("--num-workers", type=int, default=2, help="preprocessing workers")
    parser.add_argument("--ram-ratio", type=float, default=1.5,
                        help="chunk set / memory for the loader figures (a cgroup limit; 0 = the RAM as it is)")
    parser.add_argument("--pass-seconds", type=float, default=600, help="cap on one loader pass")
    parser.add_argument("--train-steps", type=int, default=100, help="streamed training steps timed")
    parser.add_argument("--quick", action="store_true",
                        help="micrographs of 384 px (sizes 4 and 8), 2 bases, 5 s passes, 3 steps, no cgroup "
                             "(for the tests)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    args.output_dir, config = args.output_dir.resolve(), SyntheticConfig()
    if args.quick:
        args.base, args.ram_ratio, args.pass_seconds, args.train_steps = 2, 0, 5, 3
        config = SyntheticConfig(width=384, height=384)
    args.sizes = args.sizes or ([4, 8] if args.quick else [20, 200, 2000])
    if min(args.sizes) < 3 or args.base < 1:
        raise SystemExit("--sizes must be at least 3 (train, val and test each get one) and --base at least 1")
    with exit_on_input_error():
        args.output_dir.mkdir(parents=True, exist_ok=True)
        pool = args.output_dir / "micrographs"
        pilot_n = min(4, min(args.sizes))
        stems, expected = build_pool(pool, pilot_n, args.base, config)
        pilot_root = dataset_of(pool, stems, args.output_dir / "size_pilot")
        pilot = {tool: preprocess(tool, pilot_root, args.output_dir / f"chunks_pilot_{tool}", args.num_workers,
                                  expected) for tool in TOOLS}
        plan(args, pool, pilot)
        start = time.perf_counter()
        stems, _ = build_pool(pool, max(args.sizes), args.base, config)
        print(f"pool of {len(stems)} micrographs ({config.width} x {config.height} px, from {args.base} generated) "
              f"ready in {time.perf_counter() - start:.0f} s", flush=True)
        sizes = {n: measure_size(args, pool, stems, expected, n) for n in sorted(args.sizes)}
        loading = measure_loading(args, args.output_dir / f"chunks_{max(args.sizes)}_sliding")
    summary = {"sizes": sizes, "loading": loading, "micrograph_px": [config.width, config.height]}
    atomic_write_json(args.output_dir / "scale.json", summary)
    print_summary(sizes)
    return summary


def print_summary(sizes):
    print(f"\n{'micrographs':>11} {'tool':>8} {'s/mic':>7} {'x smallest':>10} {'peak RSS MB':>11} {'on disk':>10} "
          f"{'chunks':>6} {'metadata':>9} {'rewrite ms':>10} {'resume: first chunk s':>22}")
    smallest = sizes[min(sizes)]
    for n, row in sizes.items():
        for tool in TOOLS:
            f = row[tool]
            per = f["seconds"] / f["micrographs"]
            ratio = per / (smallest[tool]["seconds"] / smallest[tool]["micrographs"])
            resume = row["resume"].get("first_new_chunk_s") if tool == "sliding" else None
            print(f"{n:>11} {tool:>8} {per:>7.3f} {ratio:>10.2f} {f['peak_rss_mb']:>11.0f} "
                  f"{human_bytes(f['bytes']):>10} {f['chunks']:>6} {human_bytes(f['metadata_bytes']):>9} "
                  f"{f['metadata_rewrite_s'] * 1e3:>10.1f} {'' if resume is None else format(resume, '.1f'):>22}")


if __name__ == "__main__":
    main()
