"""Artifacts in S3-compatible object storage (AWS S3, GCS interoperability, R2, MinIO,
SeaweedFS...), through boto3: the reference client, with its own retries (standard mode),
request signing and path-style addressing for self-hosted servers.

URIs are ``s3://<bucket>/<prefix><job id>/<name>``. A get of a missing key is an
``ArtifactError`` (the job fails with the reason); a store that does not answer, or answers
with a server error after boto3's retries, is ``ArtifactUnavailable`` (transient).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.exceptions import ArtifactError, ArtifactUnavailable
from services.storage.artifacts import ArtifactStore

if TYPE_CHECKING:
    from services.config.settings import Settings

__all__ = ["S3ArtifactStore"]

MISSING = {"NoSuchKey", "404", "NotFound"}


class S3ArtifactStore(ArtifactStore):
    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ArtifactStore:
        assert settings.storage.artifacts is not None
        parsed = urlparse(settings.storage.artifacts)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ArtifactError(
                f"LANES_ARTIFACTS must be s3://bucket[/prefix], got {settings.storage.artifacts!r}"
            )
        key_id, secret = settings.storage.s3_access_key_id, settings.storage.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=settings.storage.s3_endpoint_url,
            region_name=settings.storage.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                retries={"mode": "standard", "max_attempts": settings.storage.s3_max_attempts},
                connect_timeout=5,
                read_timeout=30,
                s3={"addressing_style": "path"},
            ),
        )
        return cls(parsed.netloc, parsed.path, client)

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise ArtifactUnavailable(
                f"object store bucket {self.bucket!r} cannot be used: {exc}"
            ) from exc

    def put(self, job_id: str, filename: str, data: bytes) -> str:
        self._check_name(job_id, filename)
        key = f"{self.prefix}{job_id}/{filename}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="image/png")
        except (ClientError, BotoCoreError) as exc:
            raise ArtifactUnavailable(f"cannot store s3://{self.bucket}/{key}: {exc}") from exc
        return f"s3://{self.bucket}/{key}"

    def delete_job(self, job_id: str) -> int:
        self._check_name(job_id, "x")
        prefix = f"{self.prefix}{job_id}/"
        deleted = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                    deleted += len(keys)
        except (ClientError, BotoCoreError) as exc:
            raise ArtifactUnavailable(f"cannot delete s3://{self.bucket}/{prefix}: {exc}") from exc
        return deleted

    def _key(self, uri: str) -> str:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            raise ArtifactError(f"artifact {uri!r} is not in bucket {self.bucket!r}")
        if not key.startswith(self.prefix) or ".." in key.split("/"):
            raise ArtifactError(f"artifact {uri!r} is outside the store")
        return key

    def get(self, uri: str) -> bytes:
        key = self._key(uri)
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                raise ArtifactError(f"artifact {uri!r} does not exist") from exc
            raise ArtifactUnavailable(f"artifact {uri!r} cannot be read now: {exc}") from exc
        except BotoCoreError as exc:
            raise ArtifactUnavailable(f"artifact {uri!r} cannot be read now: {exc}") from exc
