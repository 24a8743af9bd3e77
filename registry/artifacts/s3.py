"""Artifacts on S3 (AWS, SeaweedFS, MinIO...) through boto3.

Endpoint and credentials come from the usual AWS variables (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``). ``upload_file`` and
``download_file`` switch to multipart transfers above 8 MiB. botocore errors are translated into
:class:`~registry.errors.StorageUnavailableError` here and never leave the registry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import StorageUnavailableError
from .base import MARKERS, BlobInfo, BytesMoved, blob_key

__all__ = ["S3Store"]

T = TypeVar("T")
MULTIPART = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
_MISSING = {"404", "NoSuchKey", "NotFound"}
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
# what botocore's parameter check lets through (S3 servers other than AWS take more than AWS)
_BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


class S3Store:
    """Blobs under ``s3://bucket/prefix/blobs/sha256/``."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise StorageUnavailableError(f"S3 URL {url!r} names no bucket: use s3://bucket/prefix")
        if not _BUCKET_NAME.fullmatch(parsed.netloc):  # was "cannot reach S3", at the upload
            raise StorageUnavailableError(
                f"S3 URL {url!r}: {parsed.netloc!r} is not a bucket's name (letters, digits, "
                "'.', '-' and '_'; on AWS 3 to 63 lowercase letters, digits, '.' and '-'): use "
                "s3://bucket/prefix"
            )
        self.url = url.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._bucket_checked = False
        # A session of its own: boto3's default session is shared and not thread-safe, and Prefect
        # runs tasks (each opening a registry) in threads. Clients themselves are thread-safe.
        self.client = client or boto3.session.Session().client(
            "s3",
            config=Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, digest: str) -> str:
        return self._under_prefix(blob_key(digest))

    def _under_prefix(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, action: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING:
                raise FileNotFoundError(action) from None
            hint = " (create the bucket first)" if code == "NoSuchBucket" else ""
            raise StorageUnavailableError(
                f"S3 refused to {action} in bucket {self.bucket!r}: {code} {exc}{hint}"
            ) from None
        except (BotoCoreError, Boto3Error) as exc:
            endpoint = self.client.meta.endpoint_url
            raise StorageUnavailableError(
                f"cannot reach S3 at {endpoint} to {action}: {exc}. Check AWS_ENDPOINT_URL_S3 "
                "and the credentials."
            ) from None

    def _check_bucket(self) -> None:
        """Once per store: a missing bucket is one clear error, not a puzzling AccessDenied."""
        if self._bucket_checked:
            return
        try:
            self._call("look up the bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
        except FileNotFoundError:
            raise StorageUnavailableError(
                f"bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url}: create "
                "it (`adapterops stack up` does) or fix ADAPTEROPS_ARTIFACTS_URL"
            ) from None
        self._bucket_checked = True

    def check(self) -> None:
        """The bucket looked up: S3 answers, the credentials are taken, the bucket exists."""
        self._check_bucket()

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (for local stacks and tests)."""
        try:
            self._call("look up the bucket", lambda: self.client.head_bucket(Bucket=self.bucket))
        except FileNotFoundError:
            self._call("create the bucket", lambda: self.client.create_bucket(Bucket=self.bucket))

    def has(self, digest: str) -> bool:
        return self._head(digest) is not None

    def size(self, digest: str) -> int | None:
        head = self._head(digest)
        return None if head is None else int(head["ContentLength"])

    def _head(self, digest: str) -> dict[str, Any] | None:
        """The blob's HEAD answer (its size and ETag), ``None`` when it is not stored."""
        self._check_bucket()
        key = self._key(digest)
        try:
            return self._call(
                f"look up {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key)
            )
        except FileNotFoundError:
            return None

    def put_file(self, digest: str, source: Path, on_bytes: BytesMoved | None = None) -> None:
        head = self._head(digest)
        if head is not None and _is_whole(head, source):  # a damaged copy is replaced
            if on_bytes is not None:
                on_bytes(source.stat().st_size)
            return
        key = self._key(digest)
        self._call(
            f"upload {key}",
            lambda: self.client.upload_file(
                str(source), self.bucket, key, Config=MULTIPART, Callback=on_bytes
            ),
        )

    def get_file(self, digest: str, destination: Path, on_bytes: BytesMoved | None = None) -> None:
        self._check_bucket()
        key = self._key(digest)
        self._call(
            f"download {key}",
            lambda: self.client.download_file(
                self.bucket, key, str(destination), Config=MULTIPART, Callback=on_bytes
            ),
        )

    def read_bytes(self, digest: str) -> bytes:
        # get_object, not download_file: the transfer manager's threads and temporary file cost
        # more than a small manifest's bytes
        self._check_bucket()
        key = self._key(digest)
        answer = self._call(
            f"download {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=key)
        )
        return self._call(f"download {key}", answer["Body"].read)

    def blobs(self) -> Iterator[BlobInfo]:
        self._check_bucket()
        prefix = self._key("00")[: -len("00/00")]  # ".../blobs/sha256/"
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "list blobs", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        )
        for page in pages:
            for item in page.get("Contents", []):
                digest = item["Key"].rsplit("/", 1)[-1]
                yield BlobInfo(digest, int(item["Size"]), item["LastModified"])

    def delete(self, digest: str) -> None:
        key = self._key(digest)
        self._call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def delete_many(self, digests: Sequence[str]) -> None:
        keys = [self._key(digest) for digest in digests]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            request = {"Objects": [{"Key": key} for key in batch], "Quiet": True}
            answer = self._call(
                f"delete {len(batch)} blobs",
                partial(self.client.delete_objects, Bucket=self.bucket, Delete=request),
            )
            # DeleteObjects answers 200 with a per-key error list: a refused key is no success
            refused = [e for e in answer.get("Errors", []) if e.get("Code") not in _MISSING]
            if refused:
                first = refused[0]
                raise StorageUnavailableError(
                    f"S3 refused to delete {len(refused)} of {len(batch)} blobs in bucket "
                    f"{self.bucket!r}, the first {first.get('Key')}: {first.get('Code')} "
                    f"{first.get('Message', '')}".rstrip()
                )

    def clean_incomplete(self, cutoff: datetime, *, dry_run: bool = False) -> list[str]:
        self._check_bucket()
        prefix = self._key("00")[: -len("00/00")]  # ".../blobs/sha256/"
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self._call(
            "list unfinished uploads",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)),
        )
        stale = [
            (item["Key"], item["UploadId"])
            for page in pages
            for item in page.get("Uploads", [])
            if item["Initiated"] <= cutoff
        ]
        if not dry_run:
            for key, upload_id in stale:
                self._abort(key, upload_id)
        return [f"multipart:{key}" for key, _ in stale]

    def _abort(self, key: str, upload_id: str) -> None:
        self._call(
            f"abort the unfinished upload of {key}",
            lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            ),
        )

    def uri(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self._key(digest)}"

    def writers(self) -> dict[str, str]:
        self._check_bucket()
        prefix = self._under_prefix(f"{MARKERS}/")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(
            "list the registries' markers",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix)),
        )
        found = {}
        for key in (item["Key"] for page in pages for item in page.get("Contents", [])):
            found[key.rsplit("/", 1)[-1]] = self._read_text(key)
        return found

    def _read_text(self, key: str) -> str:
        answer = self._call(
            f"read {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=key)
        )
        return str(answer["Body"].read().decode())

    def mark_writer(self, registry_id: str, description: str) -> None:
        self._check_bucket()
        key = self._under_prefix(f"{MARKERS}/{registry_id}")
        self._call(
            f"write {key}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=description.encode()),
        )

    def marker_uri(self, registry_id: str) -> str:
        return f"s3://{self.bucket}/{self._under_prefix(f'{MARKERS}/{registry_id}')}"


def _is_whole(head: dict[str, Any], source: Path) -> bool:
    """Whether the stored object holds ``source``'s bytes, from its HEAD alone (no download):
    the same size and the ETag this store's upload of ``source`` gets. An object written
    otherwise (another part size, SSE-KMS) has another ETag and is uploaded again: time lost,
    nothing wrong."""
    size = source.stat().st_size
    return head.get("ContentLength") == size and head.get("ETag", "").strip('"') == upload_etag(
        source, size
    )


def upload_etag(source: Path, size: int) -> str:
    """The ETag S3 gives ``source`` uploaded through :data:`MULTIPART`: the MD5 of its bytes
    below the threshold, else the MD5 of its parts' MD5s and the number of parts (what AWS,
    SeaweedFS and MinIO compute)."""
    chunk = MULTIPART.multipart_chunksize
    with source.open("rb") as handle:
        if size < MULTIPART.multipart_threshold:
            return hashlib.md5(handle.read(), usedforsecurity=False).hexdigest()
        parts = [
            hashlib.md5(part, usedforsecurity=False).digest()
            for part in iter(lambda: handle.read(chunk), b"")
        ]
    whole = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
    return f"{whole}-{len(parts)}"
