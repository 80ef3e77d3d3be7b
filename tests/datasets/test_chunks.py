"""The chunk loader (three modes, several shards, errors), the prior, the PU sampler and the streams."""
import json
import math

import pytest
import torch

from common.errors import InputError
from datasets.chunks.format import SAMPLE_TYPES, SCHEMA_VERSION, PreprocessingFacts, chunk_name, read_facts
from datasets.chunks.loader import CryoEMChunkedDataset, PUBatchSampler, open_chunk_dirs, refuse_beyond_memory
from datasets.chunks.stream import ChunkStream, PUStream
from datasets.prior import read_prior

S = 8
TYPE_OF_LABEL = {1: SAMPLE_TYPES["labeled_positive"], 0: SAMPLE_TYPES["background"],
                 -1: SAMPLE_TYPES["known_negative"]}


def make_chunk(labels, first_id):
    """A contract chunk whose patch pixel [0, 0] and [0, 1] encode a running sample id."""
    labels = torch.tensor(labels, dtype=torch.int8)
    n = len(labels)
    ids = torch.arange(first_id, first_id + n)
    patches = torch.randint(0, 256, (n, S, S), dtype=torch.uint8)
    patches[:, 0, 0], patches[:, 0, 1] = (ids % 256).to(torch.uint8), (ids // 256).to(torch.uint8)
    sample_type = torch.tensor([TYPE_OF_LABEL[int(v)] for v in labels], dtype=torch.int8)
    return {"patches": patches, "label": labels, "sample_type": sample_type,
            "true_label": (labels == 1).to(torch.int8), "micrograph": (ids // 10).to(torch.int32),
            "xy": torch.stack([ids, ids * 2], 1).to(torch.int32)}


def write_chunk_dir(root, splits, patch_size=S, complete=True, train_counts=None, prior_method="counted",
                    prior=0.25):
    """Write a chunk dir per the contract; `splits` maps split -> list of per-chunk label lists."""
    root.mkdir(parents=True, exist_ok=True)
    meta_splits, first_id = {}, 0
    for split, chunks in splits.items():
        entries = []
        for k, labels in enumerate(chunks):
            chunk = make_chunk(labels, first_id)
            first_id += len(labels)
            torch.save(chunk, root / chunk_name(split, k))
            counts = {name: int((chunk["sample_type"] == code).sum()) for name, code in SAMPLE_TYPES.items()}
            entries.append({"file": chunk_name(split, k), "count": len(labels), "counts": counts})
        total = {name: sum(e["counts"][name] for e in entries) for name in SAMPLE_TYPES}
        meta_splits[split] = {"chunks": entries, "counts": total}
    if train_counts is not None:
        meta_splits.setdefault("train", {"chunks": []})["counts"] = train_counts
    hidden = (train_counts or {}).get("hidden_positive", 0)
    unlabeled = hidden + (train_counts or {}).get("background", 0)
    facts = PreprocessingFacts(patch_size=patch_size, particle_diameter_px=20.0, scale=0.5, clip_sigma=4.0)
    metadata = {"schema_version": SCHEMA_VERSION, "complete": complete, "config": {"patch_size": patch_size},
                "facts": facts.to_dict(),
                "micrographs": [{"stem": f"m{i}", "status": "done" if i < 2 else "todo"} for i in range(5)],
                "resume": {"micrographs_done": 2}, "splits": meta_splits,
                "priors": {"prior_unlabeled": prior, "positive_fraction": 0.1, "method": prior_method,
                           "positives_in_unlabeled": hidden, "unlabeled": unlabeled}}
    (root / "metadata.json").write_text(json.dumps(metadata))
    return root


def labels_of(n_pos, n_unl, n_neg=0):
    return [1] * n_pos + [0] * n_unl + [-1] * n_neg


def sample_ids(patches):
    return patches[:, 0, 0].long() + 256 * patches[:, 0, 1].long()


@pytest.fixture
def three_chunks(tmp_path):
    return write_chunk_dir(tmp_path / "a", {"train": [labels_of(3, 9, 2), labels_of(2, 10), labels_of(1, 5, 1)],
                                            "val": [labels_of(4, 4)]})


# ---------- sampler ----------

def test_sampler_exact_ratio_and_epoch_length():
    labels = torch.tensor(labels_of(7, 90, 10))
    sampler = PUBatchSampler(labels, batch_size=10, batch_ratio=(1, 4))
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(100 / 8)
    for batch in batches:
        assert len(batch) == 10 and int((labels[batch] == 1).sum()) == 2
    assert sorted(torch.cat([b[2:] for b in batches]).unique().tolist()) == list(range(7, 107))
    assert len(list(PUBatchSampler(labels, batch_size=10, steps_per_epoch=5))) == 5


def test_sampler_batch_ratio_as_counts_or_as_a_positive_fraction():
    """train_with_chunked_data.py's --positive-ratio 0.2 becomes batch_ratio [0.2, 0.8], the same as [1, 4]."""
    labels = torch.tensor(labels_of(50, 500))
    by_ratio = PUBatchSampler(labels, batch_size=64, batch_ratio=[1, 4], seed=3)
    by_fraction = PUBatchSampler(labels, batch_size=64, batch_ratio=[0.2, 0.8], seed=3)
    assert by_ratio.n_pos == by_fraction.n_pos == 12
    assert all(torch.equal(a, b) for a, b in zip(by_ratio, by_fraction))


def test_sampler_recycles_positives_evenly():
    labels = torch.tensor(labels_of(3, 200))
    batches = list(PUBatchSampler(labels, batch_size=10, batch_ratio=(1, 4)))
    uses = torch.bincount(torch.cat([b[:2] for b in batches]), minlength=3)
    assert uses.sum() == 2 * len(batches) == 50
    assert int(uses.max() - uses.min()) <= 1


def test_sampler_seeded_per_epoch():
    labels = torch.tensor(labels_of(20, 300))
    a, b = PUBatchSampler(labels, batch_size=16, seed=5), PUBatchSampler(labels, batch_size=16, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    first = torch.stack(list(a))
    assert torch.equal(first, torch.stack(list(b)))
    b.set_epoch(4)
    assert not torch.equal(first, torch.stack(list(b)))


def test_sampler_ranks_draw_disjoint_shares():
    labels = torch.tensor(labels_of(9, 101, 6))
    ranks = [PUBatchSampler(labels, batch_size=10, seed=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(107 / 16)
    for sampler in ranks:
        sampler.set_epoch(2)
    drawn = [torch.stack(list(s)) for s in ranks]
    unl = [set(d[:, 2:].flatten().tolist()) for d in drawn]
    pos = [set(d[:, :2].flatten().tolist()) for d in drawn]
    assert not unl[0] & unl[1] and unl[0] | unl[1] == set(range(9, 116))
    assert not pos[0] & pos[1]


def test_sampler_rejects_bad_input():
    with pytest.raises(InputError, match="split has no labeled positives; check the annotations / hide ratio"):
        PUBatchSampler(torch.tensor(labels_of(0, 50)))
    with pytest.raises(InputError, match="must be two positive numbers"):
        PUBatchSampler(torch.tensor(labels_of(5, 50)), batch_ratio=(1.5, -0.5))
    with pytest.raises(InputError, match="0 positives"):
        PUBatchSampler(torch.tensor(labels_of(5, 50)), batch_size=4, batch_ratio=(1, 4))


def test_sampler_known_negative_share_fixes_their_slots():
    """known_negative_share: round(share x others) known negatives in every batch, each of them cycled."""
    labels = torch.tensor(labels_of(7, 90, 10))
    sampler = PUBatchSampler(labels, batch_size=10, batch_ratio=(1, 4), known_negative_share=0.25, seed=2)
    batches = torch.stack(list(sampler))
    assert len(batches) == len(sampler) == math.ceil(90 / 6)  # one pass over the unlabeled windows
    assert (labels[batches[:, :2]] == 1).all() and (labels[batches[:, 2:8]] == 0).all()
    assert (labels[batches[:, 8:]] == -1).all()
    assert set(batches[:, 2:8].flatten().tolist()) == set(range(7, 97))
    uses = torch.bincount(batches[:, 8:].flatten() - 97, minlength=10)
    assert int(uses.min()) == 3 and int(uses.max()) == 3  # 15 batches x 2 slots over 10 known negatives
    natural = torch.stack(list(PUBatchSampler(labels, batch_size=10, seed=2)))
    assert int((labels[natural] == -1).sum()) < int((labels[batches] == -1).sum())


def test_sampler_known_negative_share_by_rank_and_without_known_negatives():
    labels = torch.tensor(labels_of(9, 101, 6))
    ranks = [PUBatchSampler(labels, batch_size=10, seed=1, rank=r, world_size=2, known_negative_share=0.5)
             for r in range(2)]
    known = [set(torch.stack(list(s))[:, 6:].flatten().tolist()) for s in ranks]
    assert not known[0] & known[1] and known[0] | known[1] == set(range(110, 116))
    without = PUBatchSampler(torch.tensor(labels_of(9, 101)), batch_size=10, seed=1, known_negative_share=0.5)
    assert without.n_known == 0 and len(without) == math.ceil(101 / 8)
    for share in (0, 1, "a quarter"):
        with pytest.raises(InputError, match=r"data.known_negative_share .* must be a number in \(0, 1\), or null"):
            PUBatchSampler(labels, batch_size=10, known_negative_share=share)
    with pytest.raises(InputError, match="gives 0 of a batch's 8 non-positive slots .* a larger batch, or null"):
        PUBatchSampler(labels, batch_size=10, known_negative_share=0.01)
    tiny = PUBatchSampler(torch.tensor(labels_of(2, 10)), batch_size=2, batch_ratio=(1, 1), known_negative_share=0.25)
    assert tiny.n_known == 0  # no known negatives: the share has nothing to place, whatever the batch


# ---------- dataset ----------

def test_modes_give_identical_batches(three_chunks):
    indices = torch.tensor([30, 0, 13, 14, 29, 5, 31, 12])
    expected = torch.cat([torch.load(p)["patches"] for p in sorted(three_chunks.glob("train_*.pt"))])[indices]
    batches = {mode: CryoEMChunkedDataset(three_chunks, "train", mode).get_batch(indices)
               for mode in ("memory", "mmap", "on_demand")}
    for batch in batches.values():
        assert batch["patches"].dtype == torch.uint8 and batch["patches"].shape == (8, S, S)
        assert torch.equal(batch["patches"], expected)
        for key in ("label", "sample_type", "true_label"):
            assert torch.equal(batch[key], batches["memory"][key])
    assert batches["mmap"]["label"].tolist() == [0, 1, -1, 1, 0, 0, 0, -1]


def test_memory_mode_and_mmap_training_refuse_a_split_beyond_memory_and_name_the_stream(three_chunks, monkeypatch):
    split_bytes = 33 * (S * S + 3)  # 33 train samples of S x S uint8 plus three int8 labels each
    monkeypatch.setattr("datasets.chunks.loader.memory_available_bytes", lambda: int(split_bytes / 0.8) - 1)
    with pytest.raises(InputError, match=r"\[train\] holds .* loader_mode memory cannot hold it: stream it with "
                                         r"--set data.loader_mode=on_demand"):
        CryoEMChunkedDataset(three_chunks, "train", "memory")
    with pytest.raises(InputError, match=r"loader_mode mmap would read it from disk at random.*loader_mode=on_demand"):
        refuse_beyond_memory(open_chunk_dirs(three_chunks, "train"), "mmap")  # training's random batches
    assert len(CryoEMChunkedDataset(three_chunks, "train", "mmap")) == 33  # a few sorted rows read well
    monkeypatch.setattr("datasets.chunks.loader.memory_available_bytes", lambda: int(split_bytes / 0.8) + 1)
    assert len(CryoEMChunkedDataset(three_chunks, "train", "memory")) == 33
    monkeypatch.setattr("datasets.chunks.loader.memory_available_bytes", lambda: None)  # no /proc: no check
    assert len(CryoEMChunkedDataset(three_chunks, "train", "memory")) == 33


def test_labels_without_reading_patches(three_chunks):
    dataset = CryoEMChunkedDataset(three_chunks, "train", "mmap")
    assert len(dataset) == 33
    assert torch.equal(dataset.labels, torch.tensor(labels_of(3, 9, 2) + labels_of(2, 10) + labels_of(1, 5, 1),
                                                    dtype=torch.int8))
    assert int((dataset.sample_types == SAMPLE_TYPES["known_negative"]).sum()) == 3
    batch = dataset.get_batch([14])
    assert (int(batch["label"][0]), int(batch["sample_type"][0])) == (1, SAMPLE_TYPES["labeled_positive"])
    with pytest.raises(IndexError):
        dataset.get_batch([33])


def test_several_chunk_dirs_concatenate(tmp_path):
    a = write_chunk_dir(tmp_path / "a", {"train": [labels_of(2, 3)]})
    b = write_chunk_dir(tmp_path / "b", {"train": [labels_of(1, 4), labels_of(1, 1)], "val": [labels_of(1, 1)]})
    dataset = CryoEMChunkedDataset([a, b], "train", "memory")
    expected = torch.cat([torch.load(p)["patches"] for p in (a / "train_chunk_0000.pt", b / "train_chunk_0000.pt",
                                                             b / "train_chunk_0001.pt")])
    assert torch.equal(dataset.get_batch(torch.arange(12))["patches"], expected)
    assert dataset.labels.tolist() == labels_of(2, 3) + labels_of(1, 4) + labels_of(1, 1)
    assert len(CryoEMChunkedDataset([a, b], "val", "mmap")) == 2


def test_bad_chunk_dirs_are_clear_errors(tmp_path):
    incomplete = write_chunk_dir(tmp_path / "inc", {"train": [labels_of(1, 1)]}, complete=False)
    with pytest.raises(InputError, match=r"preprocessing incomplete \(2 of 5 micrographs done\); rerun the same"):
        open_chunk_dirs(incomplete, "train")
    no_val = write_chunk_dir(tmp_path / "noval", {"train": [labels_of(1, 1)]})
    with pytest.raises(InputError, match=f"{no_val}: no val chunks"):
        open_chunk_dirs(no_val, "val")
    missing = write_chunk_dir(tmp_path / "miss", {"train": [labels_of(1, 1), labels_of(1, 1)]})
    (missing / "train_chunk_0001.pt").unlink()
    with pytest.raises(InputError, match="train_chunk_0001.pt: listed in .* but missing"):
        open_chunk_dirs(missing, "train")
    other_size = write_chunk_dir(tmp_path / "big", {"train": [labels_of(1, 1)]}, patch_size=16)
    with pytest.raises(InputError, match="different patch sizes"):
        open_chunk_dirs([no_val, other_size], "train")
    with pytest.raises(InputError, match="no metadata.json"):
        open_chunk_dirs(tmp_path / "nothing", "train")


def test_chunk_disagreeing_with_metadata_is_an_error(tmp_path):
    chunk_dir = write_chunk_dir(tmp_path / "a", {"train": [labels_of(2, 2)]})
    metadata = json.loads((chunk_dir / "metadata.json").read_text())
    metadata["splits"]["train"]["chunks"][0]["count"] = 5
    (chunk_dir / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(InputError, match=r"train_chunk_0000.pt: 'patches' is torch.uint8 \[4, 8, 8\]"):
        CryoEMChunkedDataset(chunk_dir, "train")


def test_facts_are_read_and_must_agree_across_shards(tmp_path):
    a = write_chunk_dir(tmp_path / "a", {"train": [labels_of(1, 1)]})
    b = write_chunk_dir(tmp_path / "b", {"train": [labels_of(1, 1)]})
    assert read_facts([a, b]) == PreprocessingFacts(patch_size=S, particle_diameter_px=20.0, scale=0.5, clip_sigma=4.0)
    other = write_chunk_dir(tmp_path / "c", {"train": [labels_of(1, 1)]}, patch_size=16)
    with pytest.raises(InputError, match="preprocessed differently"):
        read_facts([a, other])


def test_schema_1_metadata_reads_as_schema_2(tmp_path):
    """Chunk dirs written before the facts and the prior's counts existed still train."""
    old = write_chunk_dir(tmp_path / "old", {"train": [labels_of(1, 1)]}, train_counts=counts(3, 7), prior=0.3)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["facts"], meta["priors"]["positives_in_unlabeled"], meta["priors"]["unlabeled"]
    meta["schema_version"] = 1
    meta["config"] = {"patch_size": S, "scale": 0.25, "clip_sigma": 3.0, "particle_diameter_px": 40.0}
    (old / "metadata.json").write_text(json.dumps(meta))
    assert read_facts([old]) == PreprocessingFacts(patch_size=S, particle_diameter_px=40.0, scale=0.25, clip_sigma=3.0)
    assert read_prior([old]).value == pytest.approx(0.3)


# ---------- prior ----------

def counts(hidden, background):
    return {"labeled_positive": 10, "hidden_positive": hidden, "background": background, "known_negative": 4}


def test_counted_prior_comes_from_summed_shard_counts(tmp_path):
    a = write_chunk_dir(tmp_path / "a", {}, train_counts=counts(3, 7), prior=0.3)
    b = write_chunk_dir(tmp_path / "b", {}, train_counts=counts(1, 29), prior=1 / 30)
    assert read_prior(a).value == pytest.approx(0.3)
    assert read_prior([a, b]).value == pytest.approx(4 / 40)
    assert read_prior([a, b]).source.startswith("counted")


def test_expected_particles_prior_pools_the_shards_estimates(tmp_path):
    shards = []
    for name, estimate, windows in (("a", 4.0, 10), ("b", 6.0, 30)):
        root = write_chunk_dir(tmp_path / name, {}, train_counts=counts(0, 0), prior_method="expected_particles",
                               prior=estimate / windows)
        meta = json.loads((root / "metadata.json").read_text())
        meta["priors"].update(positives_in_unlabeled=estimate, unlabeled=windows)
        (root / "metadata.json").write_text(json.dumps(meta))
        shards.append(root)
    assert read_prior(shards).value == pytest.approx((4.0 + 6.0) / (10 + 30))


def test_prior_outside_unit_interval_is_an_error(tmp_path):
    none_hidden = write_chunk_dir(tmp_path / "a", {}, train_counts=counts(0, 10))
    with pytest.raises(InputError, match=r"prior_unlabeled 0 \(counted\) is outside \(0, 1\)"):
        read_prior(none_hidden)
    other = write_chunk_dir(tmp_path / "b", {}, train_counts=counts(1, 10), prior_method="expected_particles")
    with pytest.raises(InputError, match="shards disagree"):
        read_prior([none_hidden, other])
    unknown = write_chunk_dir(tmp_path / "c", {}, train_counts=counts(0, 10),
                              prior_method="unknown: pass --expected-particles")
    with pytest.raises(InputError, match="no usable prior in metadata .* --expected-particles"):
        read_prior(unknown)


# ---------- streams ----------

@pytest.mark.parametrize("buffer_size", [0, 7, 1000])
def test_chunk_stream_yields_each_sample_once_per_pass(three_chunks, buffer_size):
    stream = ChunkStream(open_chunk_dirs(three_chunks, "train"), batch_size=4, buffer_size=buffer_size, seed=2)
    batches = list(stream)
    order = torch.cat([b["index"] for b in batches])
    assert sorted(order.tolist()) == list(range(33))
    assert all(len(b["index"]) == 4 for b in batches[:-1])
    assert torch.equal(sample_ids(torch.cat([b["patches"] for b in batches])), order)
    assert stream.bytes_read == sum(p.stat().st_size for p in three_chunks.glob("train_*.pt"))
    assert not torch.equal(order, torch.arange(33))


@pytest.mark.parametrize("batch_size, buffer_size", [(40, 16384), (4, 6), (7, 100)])
def test_a_repeating_stream_serves_every_sample_with_its_own_patch(three_chunks, batch_size, buffer_size):
    """Passes chained, also when a batch or the buffer is larger than the whole split (the rows carried
    over then exceed it): every sample keeps its own patch, and where a batch fits in a pass the first
    k x 33 samples served are every sample k times."""
    stream = iter(ChunkStream(open_chunk_dirs(three_chunks, "train"), batch_size, buffer_size, seed=2, repeat=True))
    batches = [next(stream) for _ in range(-(-5 * 33 // batch_size))]
    assert all(torch.equal(sample_ids(b["patches"]), b["index"]) for b in batches)
    served = torch.cat([b["index"] for b in batches])[:5 * 33]
    if batch_size < 33:
        assert torch.equal(torch.bincount(served, minlength=33), torch.full((33,), 5))


def test_chunk_stream_in_file_order_and_by_rank(three_chunks):
    index = open_chunk_dirs(three_chunks, "train")
    in_order = torch.cat([b["index"] for b in ChunkStream(index, batch_size=5, shuffle=False)])
    assert torch.equal(in_order, torch.arange(33))
    shares = [set(torch.cat([b["index"] for b in ChunkStream(index, 4, seed=1, rank=r, world_size=2)]).tolist())
              for r in range(2)]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(33))
    rows = [torch.cat([b["index"] for b in ChunkStream(index, 4, seed=1, rank=r, world_size=5)]) for r in range(5)]
    assert [sorted(share.tolist()) for share in rows] == [list(range(r, 33, 5)) for r in range(5)]  # 3 chunks, 5 ranks


def test_pu_stream_exact_ratio(three_chunks):
    index = open_chunk_dirs(three_chunks, "train")
    stream = PUStream(index, batch_size=5, batch_ratio=(1, 4), buffer_size=6, seed=4)
    labels = CryoEMChunkedDataset(three_chunks, "train", "mmap").labels
    batches = list(stream)
    assert len(batches) == len(stream) == math.ceil(27 / 4)
    for batch in batches:
        assert batch["label"].tolist()[:1] == [1] and all(v != 1 for v in batch["label"][1:].tolist())
        assert torch.equal(batch["label"], labels[batch["index"]])
        assert torch.equal(sample_ids(batch["patches"]), batch["index"])
    streamed = torch.cat([b["index"][1:] for b in batches])
    assert set(streamed.tolist()) == set((labels != 1).nonzero().squeeze(1).tolist())


def test_pu_stream_known_negative_share(three_chunks):
    """The known negatives (3) sit in RAM and fill the last slot of each batch; only unlabeled windows stream."""
    index = open_chunk_dirs(three_chunks, "train")
    stream = PUStream(index, batch_size=5, buffer_size=6, seed=4, known_negative_share=0.25)
    labels = CryoEMChunkedDataset(three_chunks, "train", "mmap").labels
    batches = list(stream)
    assert stream.n_known == 1 and len(batches) == math.ceil(24 / 3)
    for batch in batches:
        assert batch["label"].tolist()[:1] == [1] and batch["label"].tolist()[-1] == -1
        assert batch["label"][1:4].tolist() == [0, 0, 0]
        assert torch.equal(sample_ids(batch["patches"]), batch["index"])
    assert set(torch.cat([b["index"][1:4] for b in batches]).tolist()) == set((labels == 0).nonzero().squeeze(1).tolist())
    assert set(torch.cat([b["index"][4:] for b in batches]).tolist()) == {12, 13, 32}


def test_pu_stream_without_positives_is_an_error(tmp_path):
    chunk_dir = write_chunk_dir(tmp_path / "a", {"train": [labels_of(0, 6)]})
    with pytest.raises(InputError, match="split has no labeled positives"):
        PUStream(open_chunk_dirs(chunk_dir, "train"))


# ---------- benchmark ----------

def test_loader_benchmark_measures_every_mode(three_chunks, capsys):
    from bench.bench_loader import main
    results = main(["--data-dir", str(three_chunks), "--batch-size", "4", "--batches", "3"])
    assert set(results["modes"]) == {"memory", "mmap", "on_demand"} and results["samples"] == 33
    assert all(r["samples_per_s"] > 0 for r in results["modes"].values())
    assert results["modes"]["on_demand"]["disk_mb_per_s"] > 0 and results["disk_sequential_mb_s"] > 0
    out = capsys.readouterr().out
    assert "on_demand" in out and "page cache may still inflate it" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(three_chunks / "missing")])
    assert exit_info.value.code == 2 and "error: " in capsys.readouterr().err


def test_pu_stream_ranks_hold_disjoint_positives(three_chunks):
    index = open_chunk_dirs(three_chunks, "train")
    streams = [PUStream(index, batch_size=5, buffer_size=6, rank=r, world_size=2) for r in range(2)]
    assert len(streams[0]) == len(streams[1]) == math.ceil(27 / 8)
    pools = [set(s.pool["index"].tolist()) for s in streams]
    assert not pools[0] & pools[1] and pools[0] | pools[1] == {0, 1, 2, 14, 15, 26}
    for stream in streams:
        assert all(b["label"].tolist().count(1) == 1 for b in stream)
