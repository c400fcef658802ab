"""Shards as objects in an S3-compatible bucket (AWS, MinIO, Ceph RGW, moto...).

Key ``<prefix><id>``. boto3 is blocking, so every call runs in a worker
thread; one boto3 client (thread-safe) serves them all. S3 PUT is atomic
and durable on success, which is what `put` promises. Options (node config
``[store]``): ``bucket`` (required), ``prefix``, ``endpoint`` (for anything
but AWS), ``region``, ``access_key``/``secret_key`` (else boto3's usual
chain), ``capacity_gb`` (what the node reports; 0 = unknown).
"""

from __future__ import annotations

from typing import Any

from prismfs.data.stores import Capacity, ShardStat, validate_shard_id
from prismfs.data.stores.threaded import ThreadedStore
from prismfs.errors import ConfigError, NotFound, StorageError


class S3Store(ThreadedStore):
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str = "",
        region: str = "",
        access_key: str = "",
        secret_key: str = "",
        capacity_bytes: int = 0,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError(
                "the s3 shard store needs boto3, which is an optional extra:"
                " pip install 'prismfs[s3]'"
            ) from None

        self.bucket = bucket
        self.prefix = prefix
        self.capacity_bytes = capacity_bytes
        self._used = 0
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or "us-east-1",
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=64),
        )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> S3Store:
        bucket = options.get("bucket")
        if not bucket:
            raise ConfigError("the s3 shard store needs a bucket")
        return cls(
            str(bucket),
            prefix=str(options.get("prefix", "")),
            endpoint=str(options.get("endpoint", "")),
            region=str(options.get("region", "")),
            access_key=str(options.get("access_key", "")),
            secret_key=str(options.get("secret_key", "")),
            capacity_bytes=int(float(options.get("capacity_gb", 0)) * 1024**3),
        )

    def _key(self, shard_id: str) -> str:
        return self.prefix + validate_shard_id(shard_id)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"no shard at {kwargs.get('Key', '?')}") from None
            raise StorageError(f"S3 {what} failed: {code or exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"S3 {what} failed: {exc}") from None

    def _get(self, shard_id: str, offset: int, length: int | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(shard_id)}
        if offset or length is not None:
            if length == 0:
                return b""
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            reply = self._call("get", self.client.get_object, **kwargs)
        except StorageError as exc:
            if "InvalidRange" in exc.message:
                return b""  # offset at or past the end
            raise
        return bytes(reply["Body"].read())

    def _list(self, after: str, limit: int) -> list[str]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": max(1, min(limit, 1000)),
        }
        if after:
            kwargs["StartAfter"] = self.prefix + after
        reply = self._call("list", self.client.list_objects_v2, **kwargs)
        return [obj["Key"][len(self.prefix) :] for obj in reply.get("Contents", [])]

    def _stat(self, shard_id: str) -> ShardStat:
        reply = self._call(
            "head", self.client.head_object, Bucket=self.bucket, Key=self._key(shard_id)
        )
        modified = reply["LastModified"].timestamp()
        return ShardStat(int(reply["ContentLength"]), int(modified * 1e9))

    def _delete(self, shard_id: str) -> bool:
        key = self._key(shard_id)
        try:
            self._call("head", self.client.head_object, Bucket=self.bucket, Key=key)
        except NotFound:
            return False
        self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=key)
        return True

    def _put(self, shard_id: str, data: bytes | bytearray | memoryview) -> None:
        key = self._key(shard_id)
        self._call("put", self.client.put_object, Bucket=self.bucket, Key=key, Body=bytes(data))

    def _capacity(self) -> Capacity:
        return Capacity(self.capacity_bytes, 0)

    def _close(self) -> None:
        self.client.close()
