"""Where everything that is not a table lives: one artifact location in the store, opened through pyarrow.fs.

Tables go through Spark/Delta (gramian.tables); checkpoints, the ScaNN index, reports and any file a task
reads are artifacts under `storage.artifacts`, else `<storage.root>/_artifacts`. A `Store` is a small
picklable description (a URI plus the filesystem options the driver read from Spark's S3A settings), so the
driver and every task open the same place the same way; executors share nothing with the driver but it.

URIs name what Spark's Hadoop filesystems name (`s3a://bucket/key`, `gs://`, `abfss://container@account...`,
`hdfs://`, `file:`); a plain path is a POSIX mount every node has (`/Volumes/...`, `/dbfs/...`).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from gramian.errors import ConfigError, StorageError

ARTIFACTS = "_artifacts"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
S3_SCHEMES = ("s3a", "s3", "s3n")
# Hadoop filesystem class -> the Maven package that provides it (version: pyspark's bundled Hadoop)
AWS, AZURE = "org.apache.hadoop:hadoop-aws:{hadoop}", "org.apache.hadoop:hadoop-azure:{hadoop}"
GCS = "com.google.cloud.bigdataoss:gcs-connector:3.0.4 (its shaded jar)"
HADOOP_PACKAGES = {  # Hadoop filesystem class prefix -> (Maven package, schemes); {hadoop}: pyspark's Hadoop
    "org.apache.hadoop.fs.s3a": (AWS, "s3a"), "org.apache.hadoop.fs.azurebfs": (AZURE, "abfs/abfss"),
    "org.apache.hadoop.fs.azure": (AZURE, "wasb/wasbs"), "org.apache.hadoop.fs.gs": (GCS, "gs"),
    "com.google.cloud.hadoop.fs.gcs": (GCS, "gs"),
}
SCHEME_PACKAGES = {"s3a": AWS, "abfs": AZURE, "abfss": AZURE, "wasb": AZURE, "wasbs": AZURE, "gs": GCS}


# ---------------------------------------------------------------- roots and URIs


def scheme(uri: str) -> str | None:
    """The URI scheme in lower case (`s3a`, `file`, ...), None for a plain path."""
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else None


def resolve_root(root: str) -> str:
    """A root as Spark and tasks should see it: URIs untouched, POSIX paths expanded and made absolute.

    Called once on the driver (load_config), so a relative path never reaches an executor's working dir.
    """
    root = root.strip()
    if scheme(root) is not None:
        return root.rstrip("/") if not root.endswith(":/") and not root.endswith("://") else root
    path = os.path.abspath(os.path.expanduser(os.path.expandvars(root)))
    return path.rstrip("/") or "/"


def is_relative(root: str) -> bool:
    """True for a plain path that depends on the working directory (`./warehouse`, `wh`)."""
    root = os.path.expanduser(os.path.expandvars(root.strip()))
    return scheme(root) is None and not os.path.isabs(root)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a URI or a path (no pathlib: a root is a URI until proven local)."""
    out = base.rstrip("/") if base.rstrip("/") else base
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}" if not out.endswith("/") else f"{out}{p}"
    return out


def parent(uri: str) -> str:
    """The folder holding `uri` (a URI or a path)."""
    head, _, _ = uri.rstrip("/").rpartition("/")
    return head if head and not head.endswith(":/") and not head.endswith(":") else uri


def spark_path(root: str) -> str:
    """How Spark should name a root: `/dbfs/x` (the FUSE view) is `dbfs:/x` to Spark; the rest as given."""
    if root == "/dbfs" or root.startswith("/dbfs/"):
        return "dbfs:" + (root[len("/dbfs"):] or "/")
    return root


def artifacts_uri(storage: Any) -> str:
    """The artifact location: storage.artifacts, else <storage.root>/_artifacts (a catalog needs artifacts set)."""
    if storage.artifacts:
        return resolve_root(storage.artifacts)
    if storage.catalog:
        raise ConfigError(f"storage.artifacts must be set when tables live in a catalog (storage.catalog="
                          f"{storage.catalog!r}), got null. Set it to a Unity Catalog Volume or any store URI, e.g. "
                          f"--set storage.artifacts=/Volumes/{storage.catalog}/{storage.schema or 'default'}/"
                          f"<volume>/gramian.")
    return join(spark_path(resolve_root(storage.root)), ARTIFACTS)


def hadoop_version() -> str:
    """The Hadoop version pyspark bundles (from its hadoop-client-api jar), e.g. 3.5.0."""
    import pyspark

    folder = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            m = re.match(r"hadoop-client-api-(\d+\.\d+\.\d+)\.jar$", name)
            if m:
                return m.group(1)
    return "<Spark's Hadoop version>"


# ---------------------------------------------------------------- Spark's errors in words


def spark_storage_error(exc: BaseException, uri: str, key: str) -> StorageError | None:
    """A StorageError naming `key` and the remedy when `exc` says the store cannot be opened, else None."""
    text = str(exc)
    m = re.search(r"ClassNotFoundException: Class ([\w.$]+) not found", text)
    if m and any(m.group(1).startswith(prefix) for prefix in HADOOP_PACKAGES):
        cls = m.group(1)
        pkg, schemes = next(v for k, v in HADOOP_PACKAGES.items() if cls.startswith(k))
        pkg = pkg.format(hadoop=hadoop_version())
        return StorageError(
            f"{key} must use a scheme whose Hadoop filesystem is on Spark's classpath, got {uri!r} ({cls} not "
            f"found, the {schemes} connector). Add the package {pkg} to spark.jars.packages (spark-submit "
            f"--packages, or `spark: {{conf: {{spark.jars.packages: ...}}}}` in the YAML for a local session), or use "
            f"a root Spark can open.")
    m = re.search(r'No FileSystem for scheme "?([\w+.-]+)"?', text)
    if m:
        sch = m.group(1)
        pkg = SCHEME_PACKAGES.get(sch.lower())
        fix = (f"Add the package {pkg.format(hadoop=hadoop_version())} to spark.jars.packages" if pkg else
               f"Add the jar of a Hadoop filesystem for {sch!r} to spark.jars.packages")
        return StorageError(f"{key} must use a scheme Spark's Hadoop filesystems know, got {uri!r} (no FileSystem "
                            f"for scheme {sch!r}). {fix}, or use a root Spark can open.")
    for marker in ("UnknownHostException", "ConnectException", "NoSuchBucket", "AccessDenied", "403 Forbidden",
                   "SocketTimeoutException", "UnknownStoreException", "Connection refused",
                   "AWSClientIOException", "AccessDeniedException", "unable to execute HTTP request"):
        if marker in text:
            first = next((ln.strip() for ln in text.splitlines() if marker in ln), marker)[:300]
            return StorageError(f"{key} must be reachable from Spark, got {uri!r} ({first}). Check the host, "
                                f"port, bucket and credentials (spark.hadoop.fs.s3a.* or the platform's "
                                f"settings) and that the root exists.")
    return None


# ---------------------------------------------------------------- S3A settings -> pyarrow


S3A_KEYS = {  # Spark's S3A setting -> what pyarrow's S3FileSystem calls it
    "endpoint": "endpoint_override", "access.key": "access_key", "secret.key": "secret_key",
    "session.token": "session_token", "endpoint.region": "region", "path.style.access": "path_style",
    "connection.ssl.enabled": "ssl", "aws.credentials.provider": "provider",
}
SECRET_OPTIONS = ("access_key", "secret_key", "session_token")


def _conf(spark: Any, key: str) -> str | None:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # Connect raises for some keys
        return None
    return None if value in (None, "") else str(value)


def _active_session() -> Any:
    """The session running in this process, if any (classic or Connect); None off the driver."""
    try:
        from pyspark.sql import SparkSession

        return SparkSession.getActiveSession()
    except Exception:  # noqa: BLE001 - no pyspark, or inside a task
        return None


def s3_settings(spark: Any, bucket: str) -> dict[str, str]:
    """The S3A settings of `bucket` from the session conf (per-bucket keys first), else the AWS_* environment."""
    raw: dict[str, str] = {}
    spark = spark if spark is not None else _active_session()
    for s3a, ours in S3A_KEYS.items():
        value = None
        if spark is not None:
            value = (_conf(spark, f"spark.hadoop.fs.s3a.bucket.{bucket}.{s3a}")
                     or _conf(spark, f"spark.hadoop.fs.s3a.{s3a}"))
        if value is not None:
            raw[ours] = value
    env = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
           "session_token": "AWS_SESSION_TOKEN", "region": "AWS_REGION", "endpoint_override": "AWS_ENDPOINT_URL_S3"}
    for ours, var in env.items():  # spark-submit copies the AWS_* keys into S3A's settings too
        if ours not in raw and os.environ.get(var):
            raw[ours] = os.environ[var]
    if "region" not in raw and os.environ.get("AWS_DEFAULT_REGION"):
        raw["region"] = os.environ["AWS_DEFAULT_REGION"]
    if "endpoint_override" not in raw and os.environ.get("AWS_ENDPOINT_URL"):
        raw["endpoint_override"] = os.environ["AWS_ENDPOINT_URL"]
    return raw


def _s3_kwargs(raw: dict[str, str]) -> dict[str, Any]:
    """pyarrow.fs.S3FileSystem arguments from S3A-style settings (endpoint with or without http[s]://)."""
    kw: dict[str, Any] = {}
    ssl = raw.get("ssl", "true").strip().lower() != "false"
    endpoint = raw.get("endpoint_override")
    if endpoint:
        m = re.match(r"^(https?)://(.*)$", endpoint.strip())
        kw["scheme"] = m.group(1) if m else ("https" if ssl else "http")
        kw["endpoint_override"] = (m.group(2) if m else endpoint.strip()).rstrip("/")
    for k in ("access_key", "secret_key", "session_token", "region"):
        if raw.get(k):
            kw[k] = raw[k]
    if raw.get("path_style", "").strip().lower() == "false" and endpoint:
        kw["force_virtual_addressing"] = True  # S3A virtual-host style was asked for explicitly
    if "Anonymous" in raw.get("provider", ""):
        kw["anonymous"] = True
    return kw


# ---------------------------------------------------------------- the store


@dataclass(frozen=True)
class Store:
    """A picklable handle on one folder of the artifact store: its URI and how to open it (secrets not shown)."""

    uri: str
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_OPTIONS else v) for k, v in self.options}
        return f"Store({self.uri!r}{', ' + repr(shown) if shown else ''})"

    def child(self, *parts: str) -> Store:
        """The store rooted at `uri/part/...` (same options)."""
        return Store(join(self.uri, *parts), self.options)

    def uri_of(self, *parts: str) -> str:
        """The Spark/Hadoop URI (or path) of `parts` under this store: what Spark reads and writes."""
        return join(self.uri, *parts)

    @property
    def is_local(self) -> bool:
        """True when the store is a local or mounted POSIX folder (no download needed to open files)."""
        return _target(self.uri)[0] == "local"

    def _fs(self) -> tuple[Any, str]:
        return _filesystem(self)

    def path(self, *parts: str) -> str:
        """The filesystem path of `parts` as pyarrow names it (local path, or bucket/key)."""
        fs_path = self._fs()[1]
        return join(fs_path, *parts) if parts else fs_path

    def exists(self, *parts: str) -> bool:
        """Whether a file or folder is at `parts`."""
        import pyarrow.fs as pafs

        fs, _ = self._fs()
        info = self._call("check", lambda: fs.get_file_info(self.path(*parts)))
        return info.type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        fs, _ = self._fs()
        return self._call("read", lambda: _read_all(fs, self.path(*parts)))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write one file; readers see the old content or the new, never half (rename locally, one PUT in a store)."""
        with self.open_output(*parts) as out:
            out.write(data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    @contextlib.contextmanager
    def open_output(self, *parts: str) -> Iterator[Any]:
        """A writable stream to `parts`, published when the block exits without error."""
        fs, _ = self._fs()
        target = self.path(*parts)
        if _target(self.uri)[0] not in OBJECT_STORES:  # no folders there: making them costs requests per file
            self._call("write", lambda: fs.create_dir(parent(target), recursive=True))
        tmp = join(parent(target), f".{target.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp") if self.is_local else target
        try:
            with self._call("write", lambda: fs.open_output_stream(tmp)) as stream:
                yield stream
            if tmp != target:
                fs.move(tmp, target)
        except BaseException:
            if tmp != target:
                with contextlib.suppress(Exception):
                    fs.delete_file(tmp)
            raise

    @contextlib.contextmanager
    def open_input(self, *parts: str) -> Iterator[Any]:
        """A seekable read stream of `parts` (np.load and zip files need seeking)."""
        fs, _ = self._fs()
        with self._call("read", lambda: fs.open_input_file(self.path(*parts))) as f:
            yield f

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under `parts` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        fs, _ = self._fs()
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(i.base_name for i in self._call("list", lambda: fs.get_file_info(sel)))

    def delete(self, *parts: str) -> None:
        """Remove the folder or file at `parts` and everything under it (nothing there: nothing done)."""
        import pyarrow.fs as pafs

        fs, _ = self._fs()
        target = self.path(*parts)
        info = self._call("check", lambda: fs.get_file_info(target))
        if info.type == pafs.FileType.Directory:
            self._call("delete", lambda: fs.delete_dir(target))
        elif info.type == pafs.FileType.File:
            self._call("delete", lambda: fs.delete_file(target))

    def upload(self, local_dir: str, *parts: str) -> None:
        """Copy the local folder `local_dir` to `parts` (every file under it)."""
        import pyarrow.fs as pafs

        fs, _ = self._fs()
        dest = self.path(*parts)
        for folder, _, files in os.walk(local_dir):
            rel = os.path.relpath(folder, local_dir)
            target = dest if rel == "." else join(dest, rel)
            self._call("write", lambda t=target: fs.create_dir(t, recursive=True))
            for name in files:
                self._call("write", lambda f=folder, n=name, t=target: pafs.copy_files(
                    os.path.join(f, n), join(t, n), source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs))

    def download(self, local_dir: str, *parts: str) -> None:
        """Copy the folder at `parts` into the local folder `local_dir`."""
        import pyarrow.fs as pafs

        fs, _ = self._fs()
        src = self.path(*parts)
        infos = self._call("read", lambda: fs.get_file_info(pafs.FileSelector(src, recursive=True)))
        os.makedirs(local_dir, exist_ok=True)
        for info in sorted(infos, key=lambda i: i.path):
            rel = info.path[len(src.rstrip("/")) + 1:]
            target = os.path.join(local_dir, rel)
            if info.type == pafs.FileType.Directory:
                os.makedirs(target, exist_ok=True)
            elif info.type == pafs.FileType.File:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                self._call("read", lambda p=info.path, t=target: pafs.copy_files(
                    p, t, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()))

    def local_dir(self, *parts: str) -> str:
        """A local folder holding what is at `parts`: the folder itself when local, else a copy made once per process.

        Tasks call this (e.g. to load a serialized ScaNN searcher, which reads local files): each Python worker
        fetches from the store once into its temp dir, never from the driver's disk.
        """
        if self.is_local:
            return self.path(*parts)
        key = (self.uri_of(*parts), self.options)
        with _FETCH_LOCK:
            if key not in _FETCHED:
                folder = tempfile.mkdtemp(prefix="gramian-fetch-")
                atexit.register(shutil.rmtree, folder, True)
                self.download(folder, *parts)
                _FETCHED[key] = folder
            return _FETCHED[key]

    def _call(self, what: str, fn: Any) -> Any:
        """Run one filesystem call; an OSError becomes a StorageError naming the location and the remedy."""
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StorageError(f"the artifact store must be reachable for {what}, got {e} at {self.uri!r}. Check "
                               f"storage.artifacts / storage.root and the store's endpoint and credentials "
                               f"(spark.hadoop.fs.s3a.* or AWS_*).") from e


OBJECT_STORES = ("s3", "gcs", "azure")  # _target kinds whose files need no parent folder
_FS_CACHE: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}
_FETCHED: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_FS_LOCK = threading.Lock()
_FETCH_LOCK = threading.Lock()


def _read_all(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _target(uri: str) -> tuple[str, str, str]:
    """(kind, netloc, pyarrow path) of a store URI: kind local | s3 | gcs | azure | other."""
    sch = scheme(uri)
    if sch is None:
        return "local", "", uri
    parsed = urlparse(uri)
    if sch == "file":
        return "local", "", parsed.path or "/"
    if sch == "dbfs":  # the Databricks FUSE view of DBFS; Unity Catalog Volumes are mounted at /Volumes
        path = parsed.path or "/"
        return "local", "", path if path.startswith("/Volumes/") else "/dbfs" + path
    key = parsed.path.lstrip("/")
    if sch in S3_SCHEMES:
        return "s3", parsed.netloc, join(parsed.netloc, key)
    if sch in ("gs", "gcs"):
        return "gcs", parsed.netloc, join(parsed.netloc, key)
    if sch in ("abfs", "abfss"):
        container, _, host = parsed.netloc.partition("@")
        return "azure", host, join(container, key)
    return "other", parsed.netloc, uri


def _filesystem(store: Store) -> tuple[Any, str]:
    """The pyarrow filesystem and path of a store, one filesystem object per process and location."""
    import pyarrow.fs as pafs

    kind, netloc, path = _target(store.uri)
    key = (kind, netloc, store.options)
    with _FS_LOCK:
        if key not in _FS_CACHE:
            opts = dict(store.options)
            try:
                if kind == "local":
                    fs: Any = pafs.LocalFileSystem()
                elif kind == "s3":
                    fs = pafs.S3FileSystem(**_s3_kwargs(opts))
                elif kind == "gcs":
                    fs = pafs.GcsFileSystem()
                elif kind == "azure":
                    fs = pafs.AzureFileSystem(account_name=netloc.split(".")[0])
                else:
                    fs, _ = pafs.FileSystem.from_uri(store.uri)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a missing backend
                raise StorageError(f"storage.artifacts must be a location pyarrow.fs opens (local paths, file:, "
                                   f"s3a/s3, gs, abfs/abfss, hdfs), got {store.uri!r} ({type(e).__name__}: {e}). "
                                   f"Set storage.artifacts to such a URI or a mounted path.") from e
            _FS_CACHE[key] = fs
    return _FS_CACHE[key], path if kind != "other" else urlparse(store.uri).path


def open_store(uri: str, spark: Any = None) -> Store:
    """A Store at `uri`; for s3a/s3 URIs with the endpoint, credentials, region and path style Spark's S3A uses.

    The settings are read on the driver from the session conf (works on Spark Connect too) or the AWS_*
    environment, so tasks on other hosts open the store as the driver does.
    """
    uri = resolve_root(uri)
    kind, netloc, _ = _target(uri)
    options: dict[str, str] = {}
    if kind == "s3":
        options = s3_settings(spark, netloc)
    return Store(uri, tuple(sorted(options.items())))


def artifact_store(storage: Any, spark: Any = None) -> Store:
    """The store of this configuration's artifacts (see `artifacts_uri`)."""
    return open_store(artifacts_uri(storage), spark)


def as_store(location: Store | str | os.PathLike[str]) -> Store:
    """A Store for a Store, a URI or a local path (library calls and tests pass plain paths)."""
    return location if isinstance(location, Store) else open_store(os.fspath(location))


def npz_bytes(**arrays: Any) -> bytes:
    """Arrays as the bytes of one .npz (the format checkpoints keep)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
