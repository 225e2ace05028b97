"""What an input file is, by its name: the extensions of each format, and WebDataset's member names.

One definition for everything that opens users' files: the file source reads them as a stream,
`curator.store.payloads` reads single items back by position (report thumbnails, `curator export`),
and `curator export` writes WebDataset tars with the member names the source reads.
"""

from __future__ import annotations

FORMATS = ("auto", "parquet", "jsonl", "images", "webdataset")
PARQUET_EXTS = (".parquet", ".pq")
JSONL_EXTS = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
TAR_EXTS = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: WebDataset member extensions (after the key's first dot) and the field each one fills.
WDS_FIELDS = {
    **{ext.lstrip("."): "image" for ext in IMAGE_EXTS},
    "txt": "text",
    "caption": "text",
    "cls": "label",
    "json": "metadata",
}
#: A file's position has its identity tag as `partition`, with this bit set: a Kafka partition
#: (a small number) is never taken for one, nor one for a Kafka partition.
IDENTITY_BIT = 1 << 30
#: The data formats and their extensions (an image file is a format of its own: "images").
FORMAT_EXTS = {"parquet": PARQUET_EXTS, "jsonl": JSONL_EXTS, "webdataset": TAR_EXTS}


def has_ext(name: str, exts: tuple[str, ...]) -> bool:
    return name.lower().endswith(exts)


def kind_of_file(name: str) -> str | None:
    """The format a file name says ("parquet", "jsonl", "webdataset", "images"), or None."""
    for kind, exts in FORMAT_EXTS.items():
        if has_ext(name, exts):
            return kind
    return "images" if has_ext(name, IMAGE_EXTS) else None


def wds_key(member: str) -> tuple[str, str] | None:
    """(key, extension) of a WebDataset tar member: ``dir/stem.ext`` -> (``dir/stem``, ``ext``);
    None for a member that belongs to no sample (no extension, or no stem)."""
    dirname, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{dirname}/{stem}" if dirname else stem), ext.lower()
