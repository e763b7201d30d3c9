"""Corpus readers: JSONL, Parquet and TFDS, with malformed records counted and reported, never silently dropped.

A usable record is a JSON object with a string `text` or `content`, or an augmented record (`chunks`), or a WRAP
record (`latent`). Anything else (bad JSON, not an object, none of those fields) is *malformed*: it is counted in
the `ReadReport` with its file and line (row for Parquet, index for TFDS) and skipped, or with `strict=True` it
raises `MalformedRecordError` naming the place.

Sources:
  path/to/file.jsonl | file.parquet           one file
  path/to/dir                                 every *.jsonl (else *.parquet) in it, sorted by name
  tfds:NAME[/CONFIG][:SPLIT]                  tfds.data_source(NAME, split=SPLIT, data_dir=tfds_data_dir); with
                                              internet this also reaches TFDS's Hugging Face datasets (huggingface:x)
  tfds_dir:PATH[:SPLIT]                       a prepared local TFDS builder directory (tfds.builder_from_directory)

`open_corpus(source)` gives a random-access `CorpusSource` (len, [i]) for the training pipeline: JSONL files are
indexed by line offsets (saved next to the file as `<file>.idx.npy` by `prepare`, so processes read only the
lines of their share), Parquet and TFDS are read through pyarrow / TFDS data sources.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bolt_jax.runtime.atomic import atomic_file
from bolt_jax.runtime.console import progress

log = logging.getLogger(__name__)

TEXT_KEYS = ("text", "content")
MAX_REPORTED = 20  # malformed records listed individually in a report (all are counted)


class MalformedRecordError(ValueError):
    pass


@dataclass
class ReadReport:
    """What reading a corpus met: records read, malformed ones (counted; the first MAX_REPORTED listed)."""

    num_read: int = 0
    num_malformed: int = 0
    malformed: list[str] = field(default_factory=list)  # "file:line: reason"

    def add_malformed(self, where: str, reason: str, strict: bool) -> None:
        msg = f"{where}: {reason}"
        if strict:
            raise MalformedRecordError(f"malformed record at {msg} (strict mode; set strict=False to skip and "
                                       "count malformed records)")
        self.num_malformed += 1
        if len(self.malformed) < MAX_REPORTED:
            self.malformed.append(msg)
        log.warning("skipping malformed record at %s", msg)

    def as_dict(self) -> dict[str, Any]:
        return {"num_read": self.num_read, "num_malformed": self.num_malformed, "malformed": list(self.malformed)}

    def summary(self) -> str:
        s = f"{self.num_read} records read, {self.num_malformed} malformed"
        if self.malformed:
            s += ": " + "; ".join(self.malformed[:5]) + (" ..." if self.num_malformed > 5 else "")
        return s


def record_problem(record: Any) -> str | None:
    """None if `record` is usable, else the reason it is malformed."""
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    for key in TEXT_KEYS:
        if key in record:
            return None if isinstance(record[key], str) else f"'{key}' is not a string"
    if "chunks" in record:
        from bolt_jax.data.schema import validate_augmented

        return validate_augmented(record)
    if isinstance(record.get("latent"), str):
        return None
    return f"no 'text' or 'content' field (keys: {sorted(record)[:8]})"


def parse_jsonl_line(line: bytes | str, where: str, report: ReadReport, strict: bool) -> dict | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.add_malformed(where, f"invalid JSON ({e.msg if hasattr(e, 'msg') else e})", strict)
        return None
    problem = record_problem(record)
    if problem:
        report.add_malformed(where, problem, strict)
        return None
    report.num_read += 1
    return record


def iter_jsonl(path: str, report: ReadReport | None = None, strict: bool = False) -> Iterator[dict]:
    """Records of one JSONL file; blank lines are skipped (not records), malformed ones reported."""
    report = report if report is not None else ReadReport()
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = parse_jsonl_line(line, f"{path}:{lineno}", report, strict)
            if record is not None:
                yield record


def _parquet_rows(path: str, report: ReadReport, strict: bool) -> Iterator[tuple[int, int, dict]]:
    """(row group, row in the group, record) of every usable record of one Parquet file; malformed rows reported."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    seen = 0
    for group in range(pf.num_row_groups):
        for i, record in enumerate(pf.read_row_group(group).to_pylist()):
            seen += 1
            problem = record_problem(record)
            if problem:
                report.add_malformed(f"{path}:row {seen}", problem, strict)
                continue
            report.num_read += 1
            yield group, i, record


def iter_parquet(path: str, report: ReadReport | None = None, strict: bool = False) -> Iterator[dict]:
    report = report if report is not None else ReadReport()
    for _, _, record in _parquet_rows(path, report, strict):
        yield record


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


def tfds_source(spec: str, data_dir: str | None = None):
    """A TFDS random-access data source from 'tfds:NAME[:SPLIT]' or 'tfds_dir:PATH[:SPLIT]'."""
    import tensorflow_datasets as tfds

    kind, _, rest = spec.partition(":")
    target, _, split = rest.rpartition(":") if rest.count(":") else (rest, "", "train")
    split = split or "train"
    if kind == "tfds":
        return tfds.data_source(target, split=split, data_dir=data_dir)
    if kind == "tfds_dir":
        return tfds.builder_from_directory(target).as_data_source(split=split)
    raise ValueError(f"not a TFDS source spec: {spec!r} (use tfds:NAME[:SPLIT] or tfds_dir:PATH[:SPLIT])")


def iter_tfds(spec: str, report: ReadReport | None = None, strict: bool = False,
              data_dir: str | None = None) -> Iterator[dict]:
    report = report if report is not None else ReadReport()
    src = tfds_source(spec, data_dir)
    for i in range(len(src)):
        record = _decode(src[i])
        problem = record_problem(record)
        if problem:
            report.add_malformed(f"{spec}:index {i}", problem, strict)
            continue
        report.num_read += 1
        yield record


def is_tfds(source: str) -> bool:
    return source.startswith(("tfds:", "tfds_dir:"))


def corpus_files(path: str) -> list[str]:
    """The data files of a file or directory source (JSONL preferred over Parquet in a directory)."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        for pattern in ("*.jsonl", "*.parquet"):
            files = sorted(glob.glob(os.path.join(path, pattern)))
            if files:
                return files
        raise FileNotFoundError(f"no *.jsonl or *.parquet files in corpus directory {path!r}")
    raise FileNotFoundError(f"corpus {path!r} does not exist (a .jsonl/.parquet file, a directory of them, "
                            "tfds:NAME[:SPLIT] or tfds_dir:PATH[:SPLIT])")


def iter_corpus(source: str, report: ReadReport | None = None, strict: bool = False,
                tfds_data_dir: str | None = None) -> Iterator[dict]:
    """Every usable record of a source, in order."""
    report = report if report is not None else ReadReport()
    if is_tfds(source):
        yield from iter_tfds(source, report, strict, tfds_data_dir)
        return
    for path in corpus_files(source):
        if path.endswith(".parquet"):
            yield from iter_parquet(path, report, strict)
        elif path.endswith(".jsonl") or path.endswith(".json"):
            yield from iter_jsonl(path, report, strict)
        else:
            raise ValueError(f"unsupported corpus file {path!r}: use .jsonl or .parquet")


# ---- random access, for the training pipeline ------------------------------------------------------------------


def index_path(jsonl_path: str) -> str:
    return jsonl_path + ".idx.npy"


def build_line_index(path: str, report: ReadReport, strict: bool, bar=None) -> np.ndarray:
    """Byte offsets [start, end) of every usable line, as an int64 [N, 2] array (malformed lines reported). `bar`
    (a progress display counting MiB) advances as the file is read."""
    spans = []
    shown = 0  # MiB told to the bar
    with open(path, "rb") as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if bar is not None and offset >> 20 > shown:
                bar.update((offset >> 20) - shown)
                shown = offset >> 20
            if not line.strip():
                continue
            if parse_jsonl_line(line, f"{path}:{lineno}", report, strict) is not None:
                spans.append((start, offset))
    if bar is not None:
        bar.update(_mib(offset) - shown)
    return np.asarray(spans, np.int64).reshape(-1, 2)


def _mib(size: int) -> int:
    """Whole MiB a progress display counts for `size` bytes (a started one counts)."""
    return -(-size // 2**20)


def save_line_index(path: str, spans: np.ndarray) -> None:
    with atomic_file(index_path(path), "wb") as f:
        np.save(f, np.concatenate([spans, np.array([[os.path.getsize(path), -1]], np.int64)]))


def load_line_index(path: str) -> np.ndarray | None:
    """The saved index if it exists and matches the file's size, else None."""
    target = index_path(path)
    if not os.path.exists(target):
        return None
    saved = np.load(target)
    if len(saved) == 0 or saved[-1, 0] != os.path.getsize(path):
        log.warning("ignoring stale line index %s (file size changed)", target)
        return None
    return saved[:-1]


def build_parquet_index(path: str, report: ReadReport, strict: bool) -> np.ndarray:
    """(row group, row in group) of every usable record, as an int32 [N, 2] array (malformed rows reported)."""
    rows = [(group, i) for group, i, _ in _parquet_rows(path, report, strict)]
    return np.asarray(rows, np.int32).reshape(-1, 2)


class _RowGroupCache:
    """The last few decoded Parquet row groups: in stream order, a batch's records mostly share one."""

    def __init__(self, size: int = 4):
        self.size, self._groups = size, collections.OrderedDict()

    def get(self, path: str, group: int) -> list[dict]:
        key = (path, group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).read_row_group(group).to_pylist()
        self._groups[key] = rows
        if len(self._groups) > self.size:
            self._groups.popitem(last=False)
        return rows


class CorpusSource(Sequence[dict]):
    """Random access to the usable records of a corpus (len, [i]). Reads JSONL lines lazily by offset and Parquet
    records by row group (a few decoded groups cached), so a corpus larger than memory is fine."""

    def __init__(self, source: str, strict: bool = False, tfds_data_dir: str | None = None,
                 show_progress: bool = False):
        """`show_progress`: a progress display (MiB read) while files without a saved index are indexed, a pass
        over the whole corpus (`prepare` shows it; a training process reads the index `prepare` saved)."""
        self.source, self.strict = source, strict
        self.report = ReadReport()
        self._files: list[str] = []
        self._spans: list[np.ndarray] = []
        self._tfds = None
        if is_tfds(source):
            self._tfds = tfds_source(source, tfds_data_dir)
            self._length = len(self._tfds)
            return
        files = corpus_files(source)
        self._parquet = all(f.endswith(".parquet") for f in files)
        if not self._parquet and not all(f.endswith(".jsonl") for f in files):
            raise ValueError(f"corpus {source!r}: mixed or unsupported files {files[:4]}; use .jsonl or .parquet")
        self._row_groups = _RowGroupCache()
        saved = {f: None if self._parquet else load_line_index(f) for f in files}
        unindexed = [f for f in files if saved[f] is None]
        total = sum(_mib(os.path.getsize(f)) for f in unindexed)
        with progress(total=total, desc="index", unit="MiB", enabled=show_progress and total > 0) as bar:
            for f in files:
                spans = saved[f]
                if spans is not None:
                    self.report.num_read += len(spans)
                elif self._parquet:
                    spans = build_parquet_index(f, self.report, strict)
                    bar.update(_mib(os.path.getsize(f)))
                else:
                    spans = build_line_index(f, self.report, strict, bar)
                self._files.append(f)
                self._spans.append(spans)
        self._starts = np.cumsum([0] + [len(s) for s in self._spans])
        self._length = int(self._starts[-1])
        if self.report.num_malformed:
            log.warning("corpus %s: %s", source, self.report.summary())

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        if not 0 <= index < self._length:
            raise IndexError(f"record {index} out of range for corpus {self.source} of {self._length} records")
        if self._tfds is not None:
            record = _decode(self._tfds[index])
            problem = record_problem(record)
            if problem:  # TFDS sources are not validated up front: report here and give an empty document
                self.report.add_malformed(f"{self.source}:index {index}", problem, self.strict)
                return {"text": ""}
            return record
        file_index = int(np.searchsorted(self._starts, index, side="right")) - 1
        start, end = self._spans[file_index][index - self._starts[file_index]]
        if self._parquet:  # (row group, row)
            return self._row_groups.get(self._files[file_index], int(start))[int(end)]
        with open(self._files[file_index], "rb") as f:
            f.seek(start)
            return json.loads(f.read(end - start))


def open_corpus(source: str, strict: bool = False, tfds_data_dir: str | None = None,
                show_progress: bool = False) -> CorpusSource:
    return CorpusSource(source, strict=strict, tfds_data_dir=tfds_data_dir, show_progress=show_progress)
