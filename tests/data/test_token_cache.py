"""The tokenised-data cache: what its key covers, worker processes give the same table, an atomic
publish, one builder while the others wait and load, corrupt or partial copies never used."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from megatron_tulu.data.sources import SourceSpec
from megatron_tulu.data.token_cache import CacheCorrupt, TokenCache, load_or_build
from megatron_tulu.data.tokenised import TokeniseSettings, build_table, data_key, sft_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tulu"


@pytest.fixture
def inputs(tmp_path: Path, task_dir: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sft.jsonl", "sft.parquet"):
        shutil.copy(FIXTURES / name, data / name)
    tok = tmp_path / "tokenizer"
    shutil.copytree(task_dir / "tokenizer", tok)
    return data, tok


def _specs(data: Path, **second) -> list[SourceSpec]:
    return [
        SourceSpec(path=str(data / "sft.jsonl")),
        SourceSpec(path=str(data / "sft.parquet"), **second),
    ]


def _digest(table) -> str:
    return hashlib.sha256(json.dumps(table.data.table.to_pydict()).encode()).hexdigest()


def test_key_covers_data_tokenizer_template_settings_and_seed(inputs) -> None:
    data, tok = inputs
    settings = TokeniseSettings(kind="sft", tokenizer_path=str(tok), max_length=256)

    def key(specs=None, s=settings, seed=0, shuffle=True) -> str:
        return data_key(specs or _specs(data), s, seed=seed, shuffle=shuffle)

    base = key()
    assert key() == base
    changed = {
        "max_length": key(s=TokeniseSettings(kind="sft", tokenizer_path=str(tok), max_length=64)),
        "template": key(s=TokeniseSettings(kind="sft", tokenizer_path=str(tok), max_length=256,
                                           chat_template="llama3")),
        "kind": key(s=TokeniseSettings(kind="rl", tokenizer_path=str(tok))),
        "weight": key(_specs(data, weight=0.5)),
        "count": key(_specs(data, num_rows=3)),
        "columns": key(_specs(data, columns=(("messages", "messages"),))),
        "split": key(_specs(data, split="test")),
        "seed": key(seed=1),
        "shuffle": key(shuffle=False),
    }  # fmt: skip
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed
    # the seed matters only when it shuffles or samples
    one = [SourceSpec(path=str(data / "sft.jsonl"))]
    assert key(one, seed=0, shuffle=False) == key(one, seed=9, shuffle=False)
    # the data's content, and the tokenizer's files
    with (data / "sft.jsonl").open("a") as f:
        f.write("\n")
    after_data = key()
    assert after_data != base
    with (tok / "tokenizer.json").open("a") as f:
        f.write("\n")
    assert key() != after_data


def test_worker_processes_give_the_same_table(inputs) -> None:
    data, tok = inputs
    settings = TokeniseSettings(kind="sft", tokenizer_path=str(tok), max_length=256)
    one, plan, workers_one = build_table(
        _specs(data, num_rows=9), settings, seed=3, shuffle=True, num_proc=1
    )
    two, _, workers_two = build_table(
        _specs(data, num_rows=9), settings, seed=3, shuffle=True, num_proc=2
    )
    assert (workers_one, workers_two) == (1, 2)
    assert len(one) == 17 and _digest(one) == _digest(two)
    # the table follows the mixture plan: row i comes from plan.order[i]
    assert [(s, r) for s, r in zip(one["source"], one["row"], strict=True)][:3] == [
        (s, r + 1) for s, r in plan.order[:3]
    ]


def test_publish_load_and_corruption(inputs, tmp_path: Path) -> None:
    data, tok = inputs
    settings = TokeniseSettings(kind="sft", tokenizer_path=str(tok), max_length=256)
    table, plan, _ = build_table(_specs(data), settings, seed=0, shuffle=False)
    cache = TokenCache(tmp_path / "cache", "sft", "ab" * 32)
    assert cache.load(repair=True) is None
    cache.publish(table, {"mixture": plan.record()})
    cache.publish(table, {"mixture": "a second builder that lost the race"})  # first one stands
    loaded, meta = cache.load(repair=False)
    assert _digest(loaded) == _digest(table) and meta["mixture"] == plan.record()
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    same = sft_dataset(loaded, pad_id=0, bad_rows="fail")
    assert [e.input_ids for e in same.examples] == [
        e.input_ids for e in sft_dataset(table, pad_id=0, bad_rows="fail").examples
    ]
    # examples decode on access from the memory-mapped table; lengths come from the table
    assert len(same) == 14 and same.report.num_rows_kept == 14
    assert same.lengths == [len(e.input_ids) for e in same.examples]
    assert [e.line for e in same.examples[8:10]] == [1, 2] and same[13].path.endswith(".parquet")
    # a flipped byte in the data: an error for a reader, moved aside and rebuilt by the builder
    arrow = next((cache.path / "data").glob("*.arrow"))
    raw = bytearray(arrow.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arrow.write_bytes(bytes(raw))
    with pytest.raises(CacheCorrupt, match="does not match its recorded size and SHA-256"):
        cache.load(repair=False)
    assert cache.load(repair=True) is None
    assert not cache.path.exists() and list((tmp_path / "cache").glob(".corrupt-sft-*"))
    # a partial copy (no meta.json, written last) and a copy for another key are not used either
    cache.publish(table, {})
    (cache.path / "meta.json").unlink()
    with pytest.raises(CacheCorrupt, match="meta.json is missing"):
        cache.load(repair=False)
    assert cache.load(repair=True) is None
    cache.publish(table, {})
    meta_file = cache.path / "meta.json"
    meta_file.write_text(meta_file.read_text().replace("abab", "cdcd", 1))
    with pytest.raises(CacheCorrupt, match="not 'abab"):
        cache.load(repair=False)


def _rank(rank: int, root: str, table_file: str, barrier, results, builds: str) -> None:
    import datasets

    def build():
        with open(builds, "a") as f:
            f.write(f"{rank}\n")
        return datasets.load_from_disk(table_file), {"by": rank}

    cache = TokenCache(root, "sft", "cd" * 32)
    table, meta, built = load_or_build(cache, build, builder=rank == 0, wait=barrier.wait)
    results.put((rank, _digest(table), meta["by"], built))


def test_one_builder_the_others_wait_and_load(inputs, tmp_path: Path) -> None:
    data, tok = inputs
    settings = TokeniseSettings(kind="sft", tokenizer_path=str(tok), max_length=256)
    table, _, _ = build_table(_specs(data), settings, seed=0, shuffle=False)
    table.save_to_disk(str(tmp_path / "source_table"))
    ctx = multiprocessing.get_context("fork")
    builds = tmp_path / "builds.txt"
    for _ in range(2):  # a first run builds, a second reuses
        barrier, results = ctx.Barrier(3), ctx.Queue()
        args = (
            str(tmp_path / "cache"),
            str(tmp_path / "source_table"),
            barrier,
            results,
            str(builds),
        )
        procs = [ctx.Process(target=_rank, args=(r, *args)) for r in range(3)]
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert {g[1] for g in got} == {_digest(table)} and {g[2] for g in got} == {0}
    assert builds.read_text() == "0\n"  # built once, by rank 0
    assert [g[3] for g in got] == [False, False, False]
