"""The storage layer without Spark: roots resolve once, artifacts round-trip, S3A settings reach pyarrow."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from gramian import storage
from gramian.config import PublishConfig, StorageConfig, load_config
from gramian.errors import ConfigError
from gramian.retrieval import index as index_mod
from gramian.retrieval.index import build_index, load_index


@pytest.mark.parametrize("root", ["s3a://bucket/wh", "abfss://c@acct.dfs.core.windows.net/wh", "gs://b/wh",
                                  "hdfs://127.0.0.1:8020/wh", "file:///tmp/wh", "/Volumes/main/recs/vol/wh",
                                  "/dbfs/gramian/wh"])
def test_uris_and_absolute_paths_are_left_as_given(root):
    assert storage.resolve_root(root) == root
    assert storage.resolve_root(root + "/") == root
    assert load_config(None, [f"storage.root={root}"]).storage.root == root


def test_relative_and_home_paths_are_made_absolute_once_at_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["storage.root=./wh", "storage.artifacts=arts"])
    assert cfg.storage.root == str(tmp_path / "wh") and cfg.storage.artifacts == str(tmp_path / "arts")
    assert load_config(None, []).storage.root == str(tmp_path / "warehouse")  # the default ./warehouse
    assert storage.resolve_root("~/wh") == os.path.expanduser("~/wh")
    monkeypatch.chdir("/")  # resolved once: moving elsewhere later does not move the warehouse
    assert cfg.storage.root == str(tmp_path / "wh")


def test_relative_root_under_cluster_deploy_mode_names_the_key_and_the_remedy(monkeypatch):
    import gramian.config as config

    monkeypatch.setattr(config, "_cluster_deploy_mode", lambda: True)
    with pytest.raises(ConfigError, match=r"storage.root must be an absolute path or a URI under spark-submit "
                                          r"cluster deploy mode, got 'wh' \(--set storage.root=wh\).*s3a://"):
        load_config(None, ["storage.root=wh"])
    assert load_config(None, ["storage.root=s3a://b/wh"]).storage.root == "s3a://b/wh"


def test_table_and_artifact_locations_derive_from_the_root():
    from gramian.tables import table_ref

    st = StorageConfig(root="s3a://bucket/wh")
    assert table_ref(st, "train") == "s3a://bucket/wh/train"
    assert storage.artifacts_uri(st) == "s3a://bucket/wh/_artifacts"
    assert table_ref(StorageConfig(root="/dbfs/wh"), "train") == "dbfs:/wh/train"  # Spark's name of the FUSE path
    assert storage.artifacts_uri(StorageConfig(root="/dbfs/wh")) == "dbfs:/wh/_artifacts"
    assert storage._target("dbfs:/wh/_artifacts") == ("local", "", "/dbfs/wh/_artifacts")
    vol = StorageConfig(catalog="main", schema="recs", artifacts="/Volumes/main/recs/vol/gramian")
    assert table_ref(vol, "train") == "main.recs.train"
    assert storage.artifacts_uri(vol) == "/Volumes/main/recs/vol/gramian"
    with pytest.raises(ConfigError, match=r"storage.artifacts must be set when tables live in a catalog.*"
                                          r"/Volumes/main/recs/<volume>/gramian"):
        storage.artifacts_uri(StorageConfig(catalog="main", schema="recs"))


@pytest.mark.parametrize("as_uri", [False, True])
def test_artifacts_round_trip_through_a_local_store(tmp_path, as_uri):
    base = f"file://{tmp_path}" if as_uri else str(tmp_path)
    st = storage.open_store(base).child("_artifacts", "r1")
    st.write_text("one", "a", "note.txt")
    st.write_text("two", "a", "note.txt")  # replaced whole
    assert st.read_text("a", "note.txt") == "two" and st.exists("a") and not st.exists("b")
    with st.open_output("m.npz") as out:
        np.savez(out, x=np.arange(6.0).reshape(2, 3))
    with st.open_input("m.npz") as f, np.load(f) as z:
        np.testing.assert_array_equal(z["x"], np.arange(6.0).reshape(2, 3))
    assert st.listdir() == ["a", "m.npz"]  # no temporary files left behind
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.bin").write_bytes(b"\x00\x01")
    st.upload(str(src), "up")
    st.download(str(tmp_path / "back"), "up")
    assert (tmp_path / "back" / "sub" / "f.bin").read_bytes() == b"\x00\x01"
    st.delete("a")
    assert not st.exists("a") and (tmp_path / "_artifacts" / "r1" / "m.npz").is_file()


def test_store_pickles_for_tasks_and_never_shows_secrets():
    st = storage.Store("s3a://b/wh", (("access_key", "AKIA-X"), ("secret_key", "s3cr3t"),
                                      ("endpoint_override", "127.0.0.1:9000")))
    assert pickle.loads(pickle.dumps(st.child("index"))) == storage.Store("s3a://b/wh/index", st.options)
    shown = repr(st) + str(st)
    assert "s3cr3t" not in shown and "AKIA-X" not in shown and "127.0.0.1:9000" in shown


class FakeConf:
    def __init__(self, values):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class FakeSession:
    def __init__(self, values):
        self.conf = FakeConf(values)


def test_s3a_settings_become_pyarrow_s3_options_per_bucket_first(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    spark = FakeSession({"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:5000",
                         "spark.hadoop.fs.s3a.access.key": "ak", "spark.hadoop.fs.s3a.secret.key": "sk",
                         "spark.hadoop.fs.s3a.path.style.access": "true",
                         "spark.hadoop.fs.s3a.bucket.other.endpoint.region": "eu-west-1",
                         "spark.hadoop.fs.s3a.endpoint.region": "us-east-1"})
    st = storage.open_store("s3a://bucket/wh", spark)
    assert storage._s3_kwargs(dict(st.options)) == {"scheme": "http", "endpoint_override": "127.0.0.1:5000",
                                                     "access_key": "ak", "secret_key": "sk", "region": "us-east-1"}
    assert dict(storage.open_store("s3a://other/wh", spark).options)["region"] == "eu-west-1"
    bare = FakeSession({"spark.hadoop.fs.s3a.endpoint": "minio:9000",
                        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
                        "spark.hadoop.fs.s3a.path.style.access": "false"})
    kw = storage._s3_kwargs(dict(storage.open_store("s3a://b/x", bare).options))
    assert kw == {"scheme": "http", "endpoint_override": "minio:9000", "force_virtual_addressing": True}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-sk")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    env = dict(storage.open_store("s3a://b/x", FakeSession({})).options)
    assert env == {"access_key": "env-ak", "secret_key": "env-sk", "region": "ap-south-1"}
    assert storage.open_store("/tmp/x", spark).options == ()  # local stores carry no settings


def test_scann_index_loads_from_a_copy_in_another_folder(tmp_path):
    """What an executor does: fetch the build from the store into its own temp dir and load it from there."""
    h = np.random.default_rng(3).normal(size=(3000, 16)).astype(np.float32)
    cfg = PublishConfig(n=10, brute_force_below=0, num_leaves=20, num_leaves_to_search=6, quantize="ah",
                        training_sample_size=3000)
    built = build_index(h, np.arange(len(h)).astype(str), tmp_path / "store" / "ix", cfg, k=10)
    assert built.params.kind == "scann"
    q = np.random.default_rng(4).normal(size=(40, 16)).astype(np.float32)
    want = built.search(q, 10)[0]
    fetched = tmp_path / "executor-tmp"
    storage.open_store(str(tmp_path / "store")).download(str(fetched), "ix")
    shutil.rmtree(tmp_path / "store")  # the driver's copy is gone: only the fetched one can be read
    index_mod._CACHE.clear()
    loaded = load_index(fetched, built.token)
    assert loaded is not built and loaded.searcher is not None
    np.testing.assert_array_equal(loaded.search(q, 10)[0], want)


def test_hadoop_packages_are_named_with_pysparks_hadoop_version():
    version = storage.hadoop_version()
    assert version[0].isdigit() and version.count(".") == 2
    err = storage.spark_storage_error(RuntimeError("java.lang.ClassNotFoundException: Class "
                                                   "org.apache.hadoop.fs.s3a.S3AFileSystem not found"),
                                      "s3a://b/wh", "storage.root")
    assert err is not None and f"org.apache.hadoop:hadoop-aws:{version}" in str(err)
    assert storage.spark_storage_error(ValueError("unrelated"), "s3a://b/wh", "storage.root") is None


def test_files_for_makes_one_file_per_target_size_and_never_none():
    from gramian.tables import FILE_BYTES, files_for

    assert files_for(0, 100) == 1
    assert files_for(FILE_BYTES // 100, 100) == 1
    assert files_for(FILE_BYTES // 100 + 1, 100) == 2
    assert files_for(10_000_000, 4 * 128 + 64) == 43  # 10M item factors at d=128: 5.8 GB in 128 MiB files
