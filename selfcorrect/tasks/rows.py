"""Reading task data: local JSONL (plain or gzipped) and Parquet files, or Hugging Face datasets.

Every loader yields (row number from 1, row dict), so errors can name the file, the line and
the field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator, Sequence


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line or row number from 1, row) of a .jsonl / .json-lines / .jsonl.gz or .parquet file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    if not path.name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        raise ValueError(f"data file {path}: expected a .jsonl, .jsonl.gz or .parquet file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def require_fields(row: dict, names: Sequence[str], where: str) -> None:
    """Raise naming `where` (file:line) and the first field of `names` the row lacks."""
    for name in names:
        if name not in row or row[name] is None:
            raise ValueError(f"{where}: missing field {name!r} (fields present: {sorted(row)})")


def read_hf(hf_id: str, hf_config: str | None, split: str) -> Iterator[tuple[int, dict]]:
    """Rows of a Hugging Face dataset split (needs the `datasets` package and a network)."""
    try:
        import datasets
    except ImportError as exc:
        raise ValueError(f"loading hf_id={hf_id!r} needs the datasets package (pip install datasets)") from exc
    try:
        data = datasets.load_dataset(hf_id, hf_config, split=split)
    except Exception as exc:  # re-raised with the id and split named
        raise ValueError(f"could not load Hugging Face dataset {hf_id!r} "
                         f"(config {hf_config!r}, split {split!r}): {exc}") from exc
    for number, row in enumerate(data, start=1):
        yield number, dict(row)
