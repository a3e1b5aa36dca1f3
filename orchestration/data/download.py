"""`perception-r1 download-images --file ROWS --out DIR`: fetch a dataset's images by URL once, checking each
against its SHA-256.

PixMo-Count (allenai, on the hub) publishes `image_url` + `image_sha256` instead of images. Each image is saved as
`<sha256><suffix>` in DIR, where `data.<split>.image_dir` then finds it (`loaders.ImageFolder`); one already there
with the right hash is not fetched again. An image whose bytes do not match its hash is not kept (the link now
serves something else), and one that fails to download is listed: the loader later reports those rows by file and
row. Nothing here runs at training time.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("perception_r1")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class DownloadReport:
    """What `download_images` did: counts, and `(url, reason)` for each image not saved."""

    fetched: int = 0
    present: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def image_rows(path: str | Path) -> list[dict]:
    """`image_url` / `image_sha256` of every row of a parquet (file, folder or glob) or json/jsonl file."""
    from orchestration.data import loaders

    text = str(path)
    if text.endswith((".json", ".jsonl")):
        p = loaders._require(path, "rows file")
        rows = [row for _, row in loaders._read_rows(p, loaders.BadRows(p, 0))]
    else:
        table = loaders.read_table(path, "rows file", ("image_url", "image_sha256"))
        rows = table.data.select_columns(["image_url", "image_sha256"]).to_list()
    return [{"image_url": r.get("image_url"), "image_sha256": r.get("image_sha256")} for r in rows]


def target_name(url: str, sha256: str) -> str:
    """`<sha256><suffix>`, the suffix from the URL's path when it is an image suffix (else none)."""
    suffix = Path(urlparse(url).path).suffix.lower()
    return sha256 + (suffix if suffix in IMAGE_SUFFIXES else "")


def download_images(rows: list[dict], out: str | Path, workers: int = 8, timeout_s: float = 60.0) -> DownloadReport:
    """Fetch each row's `image_url` into `out` as `target_name(...)`, kept only if its SHA-256 is `image_sha256`.
    `workers` downloads run at once; each has `timeout_s`. Never raises for one image: see `DownloadReport`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = DownloadReport()
    todo = []
    for row in {r["image_sha256"]: r for r in rows if r.get("image_url") and r.get("image_sha256")}.values():
        dest = out / target_name(row["image_url"], row["image_sha256"])
        if dest.is_file() and _sha256(dest.read_bytes()) == row["image_sha256"]:
            report.present += 1
        else:
            todo.append((row["image_url"], row["image_sha256"], dest))
    report.failed += [(str(r.get("image_url")), "no image_url or image_sha256") for r in rows
                      if not (r.get("image_url") and r.get("image_sha256"))]

    def fetch(job) -> tuple[str, str | None]:
        url, sha, dest = job
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - the dataset's own links
                data = resp.read()
        except Exception as exc:  # noqa: BLE001 - a dead link is reported, not fatal
            return url, f"{type(exc).__name__}: {exc}"
        if _sha256(data) != sha:
            return url, f"SHA-256 {_sha256(data)[:12]}... is not the row's {sha[:12]}..."
        partial = dest.with_name(dest.name + ".partial")
        partial.write_bytes(data)
        partial.rename(dest)
        return url, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (url, error) in enumerate(pool.map(fetch, todo), start=1):
            if error is None:
                report.fetched += 1
            else:
                report.failed.append((url, error))
            if i % 1000 == 0:
                log.info("download-images: %d of %d done", i, len(todo))
    return report


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """`perception-r1 download-images --file ROWS --out DIR`; exit 1 if any image failed."""
    parser = argparse.ArgumentParser(description="Download a dataset's images by URL once, checking SHA-256")
    parser.add_argument("--file", required=True, help="rows with image_url + image_sha256 (parquet, json, jsonl)")
    parser.add_argument("--out", required=True, help="the folder to use as data.<split>.image_dir")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = download_images(image_rows(args.file), args.out, args.workers)
    print(f"download-images: {report.fetched} fetched, {report.present} already there, {len(report.failed)} failed")
    for url, reason in report.failed[:20]:
        print(f"  {url}: {reason}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
