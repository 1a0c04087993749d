"""Reading task data: local JSONL (plain or gzipped) and Parquet files, or Hugging Face datasets
(a hub id, or a folder written by `save_to_disk`).

Every loader yields (row number from 1, row dict), so errors can name the file, the line and
the field. Every error is a one-line ValueError naming the source, raised before any row is
used, so `task.load(split)` fails fast and readably before a model is loaded."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

INSTALL_DATASETS = "pip install datasets"

#: The longest line a JSONL data file may hold, in bytes (10 MiB). A longer line is refused
#: with its number instead of being read whole: a file without newlines (a binary file, a
#: JSON array dumped on one line) would otherwise be pulled into memory at once. One problem
#: is a few kB; the biggest rows of the supported datasets are well under 1 MB.
MAX_LINE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset: its id (or a local save_to_disk folder) and the configs whose
    rows are read one after the other (None = the dataset's only/default config)."""

    id: str
    configs: tuple[str | None, ...] = (None,)

    @classmethod
    def from_options(cls, hf_id: str, hf_config: str | None) -> "HubSource":
        """hf_config may name several configs, comma-separated ("algebra,geometry")."""
        if not hf_config:
            return cls(hf_id)
        return cls(hf_id, tuple(part.strip() for part in hf_config.split(",") if part.strip()))

    def __str__(self) -> str:
        configs = [c for c in self.configs if c]
        if not configs:
            return self.id
        return f"{self.id} (config {configs[0]})" if len(configs) == 1 else f"{self.id} ({len(configs)} configs)"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened: errors here end up in a CLI message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line or row number from 1, row) of a .jsonl / .json-lines / .jsonl.gz or .parquet file."""
    path = Path(path).expanduser()
    check_file(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
        try:
            table = pq.read_table(path)
        except Exception as exc:  # not a Parquet file, truncated, ...
            raise ValueError(f"{path}: not a readable Parquet file ({one_line(exc)})") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(_lines(handle, path), start=1):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{number}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column "
                                 f"{exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _lines(handle, path: Path, limit: int | None = None) -> Iterator[bytes]:
    """The lines of a binary file, each at most `limit` bytes (MAX_LINE_BYTES) - a longer one is
    a one-line ValueError naming the line, read no further than the limit."""
    limit = limit or MAX_LINE_BYTES
    number = 0
    while True:
        try:
            line = handle.readline(limit + 1)
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
            raise ValueError(f"{path}:{number + 1}: cannot read ({one_line(exc)})") from None
        if not line:
            return
        number += 1
        if len(line) > limit:
            raise ValueError(f"{path}:{number}: line longer than {limit // (1024 * 1024)} MB (the limit for "
                             f"one row); is this a JSONL file with one problem per line?")
        yield line


def check_file(path: Path) -> None:
    """Raise a one-line ValueError unless `path` is a readable data file of a known kind; cheap,
    so a task can check its files before any model work."""
    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"data file {path} is not a file")
    if not path.name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")):
        raise ValueError(f"data file {path}: expected a .jsonl, .jsonl.gz or .parquet file")


def require_fields(row: dict, names: Sequence[str], where: str) -> None:
    """Raise naming `where` (file:line) and the first field of `names` the row lacks."""
    for name in names:
        if name not in row or row[name] is None:
            raise ValueError(f"{where}: missing field {name!r} (fields present: {sorted(row)})")


def import_datasets(what: str):
    """The `datasets` module, or a ValueError telling the user how to get it."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{what} needs the Hugging Face `datasets` package: {INSTALL_DATASETS} "
                         f"(or give a local .jsonl file instead)") from None
    return datasets


def read_hf(source: HubSource | str, hf_config: str | None = None, split: str = "test") -> Iterator[tuple[int, dict]]:
    """Rows of one split of a Hugging Face dataset, numbered from 1 across its configs.

    `source.id` is a hub id (downloaded and cached by `datasets.load_dataset`) or a local
    folder written by `Dataset.save_to_disk` (its rows serve any split asked of it) or
    `DatasetDict.save_to_disk` (split by name); the folder form needs no network and
    ignores the configs.
    """
    if isinstance(source, str):
        source = HubSource.from_options(source, hf_config)
    datasets = import_datasets(f"loading Hugging Face dataset {source.id!r}")
    number = 0
    for data in _splits_of(datasets, source, split):
        for row in data:
            number += 1
            yield number, dict(row)


def _splits_of(datasets, source: HubSource, split: str) -> list:
    """The dataset objects holding `split` of `source` (one per config)."""
    folder = Path(source.id).expanduser()
    if folder.is_dir():  # configs do not apply: a saved folder holds one config's splits
        try:
            data = datasets.load_from_disk(str(folder))
        except Exception as exc:  # re-raised with the folder named
            raise ValueError(f"{folder}: not a folder written by save_to_disk ({one_line(exc)})") from None
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{folder}: no split {split!r} (splits: {', '.join(data)})")
            return [data[split]]
        return [data]
    loaded = []
    for config in source.configs:
        try:
            loaded.append(datasets.load_dataset(source.id, config, split=split))
        except Exception as exc:  # re-raised with the id, config and split named, on one line
            raise ValueError(f"could not load Hugging Face dataset {source.id!r} (config {config!r}, "
                             f"split {split!r}): {one_line(exc)}") from None
    return loaded
