"""Artifact store: where rendered PNGs live. A local directory by default."""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

__all__ = ["LocalArtifactStore", "ArtifactError"]


class ArtifactError(Exception):
    """An artifact URI that this store cannot read (unknown scheme, outside root, missing)."""


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
        return self.path(uri).read_bytes()

    def open_image(self, uri: str) -> Image.Image:
        try:
            with Image.open(io.BytesIO(self.get(uri))) as img:
                return img.convert("RGB")
        except ArtifactError:
            raise
        except Exception as exc:  # PIL raises several types for a corrupt file
            raise ArtifactError(f"artifact {uri!r} is not a readable image: {exc}") from exc
