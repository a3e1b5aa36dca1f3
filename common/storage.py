"""Shared storage for a run on a cluster: the driver and every learner rank must see one `train.output_dir`.

Checkpoints are committed by the driver renaming a directory into which every rank wrote its ZeRO-3 shard, and
the final export is written by rank 0; both are only whole if that directory is one directory for all of them
(an NFS export or a PersistentVolumeClaim mounted at the same path on every node). The driver writes a fresh token
into it at start; each rank reads it back before it loads anything, so a directory that is not shared fails at
once, naming the path and the node, instead of leaving checkpoints that cannot be resumed.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

TOKEN_FILE = ".perception-r1-run"


class SharedStorageError(RuntimeError):
    """A path the run needs is not the same on the driver and on a learner or engine node."""


def write_run_token(out_dir: Path) -> str:
    """A new token in `out_dir`/TOKEN_FILE (written whole, then renamed); returns it."""
    token = uuid.uuid4().hex
    partial = Path(out_dir) / f"{TOKEN_FILE}.{token}"
    partial.write_text(token)
    os.replace(partial, Path(out_dir) / TOKEN_FILE)
    return token


def node_name() -> str:
    """This node for messages: host name and, inside Ray, its node IP."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray the host name is enough
        ip = None
    return socket.gethostname() + (f" ({ip})" if ip else "")


def check_shared_storage(out_dir: str, token: str, model_path: str) -> None:
    """On a learner rank, before it loads anything: `out_dir` must hold the driver's `token` (the same directory,
    not a local one of the same name), and `model_path` a checkpoint. Raises SharedStorageError naming both."""
    path = Path(out_dir) / TOKEN_FILE
    try:
        seen = path.read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        what = "does not exist" if seen is None else "holds another run's token"
        raise SharedStorageError(
            f"train.output_dir {out_dir!r} on node {node_name()} is not the driver's: {path} {what}. The driver and "
            "every learner rank write checkpoints and the final export there, so it must be one shared directory "
            "mounted at the same absolute path on every node (NFS, a PersistentVolumeClaim; deploy/rayjob.yaml)")
    if not (Path(model_path) / "config.json").is_file():
        raise SharedStorageError(f"the model {model_path!r} is not readable on node {node_name()}: put model.path "
                                 "(and sft.output_dir, for a warm start) on storage every node mounts")
