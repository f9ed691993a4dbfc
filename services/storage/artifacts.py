"""Artifact stores: where rendered PNGs live, named by a URI that events carry.

One interface, two backends, chosen by ``LANES_ARTIFACTS`` (``open_store``):

- ``LocalArtifactStore``: a directory (``file://`` URIs), the embedded default of `make up`;
  only processes that share that disk can read it.
- ``S3ArtifactStore`` (``services.storage.s3``): any S3-compatible object store
  (``s3://bucket/prefix`` URIs), so the gateway, workers and verifier need no shared disk.

Clients never see these URIs: the gateway serves every artifact at a URL of its own.
"""

from __future__ import annotations

import io
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from PIL import Image

from services.exceptions import ArtifactError, ArtifactUnavailable

if TYPE_CHECKING:
    from services.config.settings import Settings

__all__ = [
    "ArtifactStore",
    "LocalArtifactStore",
    "ArtifactError",
    "ArtifactUnavailable",
    "open_store",
]


class ArtifactStore(ABC):
    @abstractmethod
    def put(self, job_id: str, filename: str, data: bytes) -> str:
        """Store ``data`` as the job's ``filename``; return its URI."""

    @abstractmethod
    def get(self, uri: str) -> bytes:
        """The bytes at ``uri``: ArtifactError if missing, ArtifactUnavailable for now."""

    @abstractmethod
    def check(self) -> None:
        """Raise ArtifactUnavailable with the reason if the store cannot be used."""

    @abstractmethod
    def delete_job(self, job_id: str) -> int:
        """Delete every artifact of the job (retention); return how many. Idempotent."""

    def put_png(self, job_id: str, name: str, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)  # encode speed over size
        return self.put(job_id, f"{name}.png", buf.getvalue())

    def open_image(self, uri: str) -> Image.Image:
        data = self.get(uri)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except Exception as exc:  # PIL raises several types for a corrupt file
            raise ArtifactError(f"artifact {uri!r} is not a readable image: {exc}") from exc

    @staticmethod
    def _check_name(job_id: str, filename: str) -> None:
        if "/" in job_id or "/" in filename or job_id.startswith(".") or not job_id:
            raise ArtifactError(f"unsafe artifact name {job_id!r}/{filename!r}")


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def put(self, job_id: str, filename: str, data: bytes) -> str:
        self._check_name(job_id, filename)
        target = self.root / job_id / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{filename}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)  # readers never see a half-written file
        return target.as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactUnavailable(f"artifact directory {self.root} is unusable: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise ArtifactUnavailable(f"artifact directory {self.root} is not writable")

    def delete_job(self, job_id: str) -> int:
        self._check_name(job_id, "x")
        folder = self.root / job_id
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.iterdir() if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ArtifactError(f"unsupported artifact URI {uri!r}")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise ArtifactError(f"artifact {uri!r} is outside the store")
        if not path.is_file():
            raise ArtifactError(f"artifact {uri!r} does not exist")
        return path

    def get(self, uri: str) -> bytes:
        path = self.path(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactError(f"artifact {uri!r} does not exist") from exc
        except OSError as exc:  # EIO, a stale network mount...: worth another try
            raise ArtifactUnavailable(f"artifact {uri!r} cannot be read now: {exc}") from exc


def open_store(settings: Settings) -> ArtifactStore:
    """The store ``LANES_ARTIFACTS`` names: ``s3://bucket/prefix``, else the local
    directory (``LANES_ARTIFACT_DIR``, default ``$LANES_STATE_DIR/artifacts``)."""
    if settings.storage.artifacts and settings.storage.artifacts.startswith("s3://"):
        from services.storage.s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings(settings)
    if settings.storage.artifacts:
        raise ArtifactError(
            f"LANES_ARTIFACTS must be s3://bucket[/prefix] (or unset for the local "
            f"directory), got {settings.storage.artifacts!r}"
        )
    return LocalArtifactStore(settings.artifacts_path)
