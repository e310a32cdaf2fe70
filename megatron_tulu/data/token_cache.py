"""The tokenised-data cache: one directory per key, published by an atomic rename, verified on
every load.

The key hashes everything that changes the tokens: the sources (paths, sizes and mtimes, or a
hub dataset's fingerprint; split, weight, row count, column mapping), the mixture seed and
shuffle, the tokenizer (a hash of its files), the chat template (its name and the ids and mask
it gives a probe conversation, so a change to the template's code changes the key too), and the
settings (max length, truncation, BOS). :data:`CACHE_FORMAT` is raised when the tokenising code
changes what it writes.

Layout: ``{root}/{kind}-{key[:24]}/`` holds ``data/`` (a ``datasets`` ``save_to_disk``
directory) and ``meta.json`` (the key, row count, each data file's size and SHA-256, the
mixture record), written last. A builder writes a ``.tmp-*`` sibling and renames it into
place; when two builders race, the first rename wins and the other's copy is removed. A
loader checks the key, the row count and every file's size and hash: a cache that fails is
moved aside (``.corrupt-*``) by the builder and rebuilt, and is an error for a reader that may
not rebuild it -- never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

CACHE_FORMAT = 2  # 2: an RL row's list-valued ``dataset`` is stored as JSON text
PROBE = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples now?"},
    {"role": "assistant", "content": "3 + 4 = 7\n#### 7"},
]


class CacheCorrupt(RuntimeError):
    """A published cache directory failed verification."""


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def tokenizer_digest(path: str | Path) -> str:
    """SHA-256 over the tokenizer's files (a directory's regular files, by name, or the file)."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file_sha256(file).encode() + b"\0")
    return digest.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (plus the cache format)."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class TokenCache:
    def __init__(self, root: str | Path, kind: str, key: str) -> None:
        self.root = Path(root)
        self.kind = kind
        self.key = key
        self.path = self.root / f"{kind}-{key[:24]}"

    def _verify(self) -> tuple[Any, dict[str, Any]]:
        import datasets

        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise CacheCorrupt("meta.json is missing (an unfinished copy)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CacheCorrupt(f"meta.json is not JSON: {err}") from err
        if meta.get("key") != self.key or meta.get("format") != CACHE_FORMAT:
            raise CacheCorrupt(f"meta.json is for key {meta.get('key')!r}, not {self.key!r}")
        for name, (size, digest) in meta["files"].items():
            file = self.path / "data" / name
            if not file.is_file():
                raise CacheCorrupt(f"data/{name} is missing")
            if file.stat().st_size != size or file_sha256(file) != digest:
                raise CacheCorrupt(f"data/{name} does not match its recorded size and SHA-256")
        try:
            table = datasets.load_from_disk(str(self.path / "data"), keep_in_memory=False)
        except Exception as err:  # whatever datasets raises on a damaged directory
            raise CacheCorrupt(f"datasets cannot load data/: {type(err).__name__}: {err}") from err
        if len(table) != meta["num_rows"]:
            raise CacheCorrupt(f"data/ holds {len(table)} rows, meta.json says {meta['num_rows']}")
        return table, meta

    def load(self, *, repair: bool) -> tuple[Any, dict[str, Any]] | None:
        """``(table, meta)``, or None when there is no cache (or, with ``repair``, when it was
        corrupt and has been moved aside to be rebuilt). Without ``repair`` a corrupt cache
        raises :class:`CacheCorrupt`."""
        if not self.path.exists():
            return None
        try:
            return self._verify()
        except CacheCorrupt as err:
            if not repair:
                raise CacheCorrupt(
                    f"tokenised-data cache {self.path} is corrupt: {err}; the rank that builds "
                    "the cache rebuilds it on the next run (or delete the directory)"
                ) from err
            aside = (
                self.root / f".corrupt-{self.path.name}-{int(time.time())}-{uuid.uuid4().hex[:6]}"
            )
            os.rename(self.path, aside)
            print(f"tokenised-data cache {self.path} is corrupt ({err}): moved to {aside}, "
                  "rebuilding", flush=True)  # fmt: skip
            return None

    def publish(self, table: Any, meta: Mapping[str, Any]) -> Path:
        """Write ``table`` and ``meta`` to a temporary sibling and rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{self.path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            table.save_to_disk(str(tmp / "data"))
            files = {
                p.name: [p.stat().st_size, file_sha256(p)]
                for p in sorted((tmp / "data").iterdir())
                if p.is_file()
            }
            full = {**meta, "key": self.key, "format": CACHE_FORMAT, "files": files,
                    "num_rows": len(table)}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(full), encoding="utf-8")
            try:
                os.rename(tmp, self.path)
            except OSError:
                if not self.path.exists():
                    raise
                # another builder published first: its copy stands, ours goes
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.path


def load_or_build(
    cache: TokenCache, build: Callable[[], tuple[Any, Mapping[str, Any]]], *, builder: bool,
    wait: Callable[[], None],
) -> tuple[Any, dict[str, Any], bool]:  # fmt: skip
    """``(table, meta, built)``: the builder loads the cache or builds and publishes it; every
    process then calls ``wait`` (a barrier), after which the others load what was published.

    One builder per machine (local rank 0) is the usual choice: with a cache directory shared
    by several machines their builders race harmlessly (the first rename wins).
    """
    got = cache.load(repair=True) if builder else None
    built = False
    if builder and got is None:
        table, meta = build()
        cache.publish(table, meta)
        got, built = cache.load(repair=False), True
    wait()
    if not builder:
        got = cache.load(repair=False)
    if got is None:
        raise FileNotFoundError(
            f"tokenised-data cache {cache.path} is missing after its builder ran: is the cache "
            "directory the same on every process of this machine?"
        )
    return got[0], got[1], built
