"""Artifact store: where rendered PNGs live. A local directory by default."""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from services.exceptions import ArtifactError, ArtifactUnavailable

__all__ = ["LocalArtifactStore", "ArtifactError", "ArtifactUnavailable"]


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def put_png(self, job_id: str, name: str, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)  # encode speed over size
        return self.put(job_id, f"{name}.png", buf.getvalue())

    def put(self, job_id: str, filename: str, data: bytes) -> str:
        if "/" in job_id or "/" in filename or job_id.startswith("."):
            raise ArtifactError(f"unsafe artifact name {job_id!r}/{filename!r}")
        target = self.root / job_id / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{filename}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)  # readers never see a half-written file
        return target.as_uri()

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

    def open_image(self, uri: str) -> Image.Image:
        data = self.get(uri)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except Exception as exc:  # PIL raises several types for a corrupt file
            raise ArtifactError(f"artifact {uri!r} is not a readable image: {exc}") from exc
