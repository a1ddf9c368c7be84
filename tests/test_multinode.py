"""Two Ray nodes on one host, no shared local state (issue 19 item 3).

`ray.cluster_utils.Cluster` starts node A (the head, custom resource `node_a`) and node B (`node_b`),
each with 2 CPUs and a scratch folder of its own as HOME and TMPDIR. Every process of both nodes has
DOCRAY_HOME on the S3 endpoint (moto, the `s3` fixture) and the repository on a Postgres server the
test starts (tests/pg.py); nothing is shared on local disk. Checked:

1. a trainer pinned to node A (its driver a task on A, its workers `worker_resources={node_a: ...}`)
   registers a model in object storage;
2. the gateway and the Recognizer, pinned to node B, load that model and serve a request (through
   Serve's proxy on the head node);
3. an archive rescan (data_jobs.recognition_archive, two actors) runs on both nodes and reports
   every row exactly once, its report in object storage;
4. a screening target added through a replica on node A is seen by a replica on node B within 10 s
   (the cut-out library in object storage, its versions ordered by Postgres);
5. a repository record written on node A is read back whole on node B (Postgres + object storage);
6. afterwards no file lies in either node's scratch folder (but temporary ones in TMPDIR: Ray's lock
   files, the library's index cache; Ray's session folder is /tmp/ray), nor in the session's DOCRAY_HOME.

Marked `multinode` and left out of the default run (about 2 minutes on 2 cores): `make
test-multinode` (= `pytest -m multinode tests/test_multinode.py`) runs it, and `.ci/run` runs that
after the fault suite. It starts its own Ray cluster, so it runs alone, never beside the session's
embedded Ray (`ray_cluster`).
"""
from __future__ import annotations

import collections
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.pg import postgres_server, unavailable
from tests.s3 import apply_env, free_port, restore_env
from tests.test_screening import poster

pytestmark = pytest.mark.multinode

MODEL = "recognition-unified"
TINY = ["model=unified_tiny", "text_encoder=hash", "encoder_from=", "n_train=16", "n_val=8", "batch_size=8",
        "epochs=1", "num_workers=1", "cpus_per_worker=1", f"register_as={MODEL}"]
ARCHIVE_FILES, ROWS_PER_FILE = 4, 3


@dataclass
class TwoNodes:
    cluster: object
    home: str  # DOCRAY_HOME of every process: an s3:// prefix
    db_url: str
    scratch: dict[str, Path]  # node name -> its scratch folder (HOME, TMPDIR)
    node_ids: dict[str, str]  # node name -> Ray node id (hex)

    def node_of(self, node_id: str) -> str:
        return next(name for name, nid in self.node_ids.items() if nid == node_id)


def _actor_nodes(class_part: str) -> list[str]:
    """The Ray node id of every actor (alive or dead) whose class name contains `class_part`."""
    import ray._private.state

    return [a["Address"]["NodeID"] for a in ray._private.state.actors().values() if class_part in a["ActorClassName"]]


# Temporary files a node may keep in its TMPDIR: Ray's own file locks, and the screening library's
# per-node cache of index folders (copies of object storage, keyed by version: docray.screening.library).
TEMPORARY = ("tmp/_ray_lockfiles/", "tmp/docray-library-cache/")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def postgres():

    if reason := unavailable():
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def local_home_before() -> tuple[Path, list[str]]:
    """The session's local DOCRAY_HOME (tests/conftest.py) and its files before this module."""
    home = Path(os.environ["DOCRAY_HOME"])
    return home, _files(home)


@pytest.fixture(scope="module")
def two_nodes(s3, postgres, local_home_before, tmp_path_factory):
    import ray
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster


    if ray.is_initialized():
        pytest.skip("another Ray runs in this process (the session's embedded one): run this module alone, "
                    "`make test-multinode`")
    home = f"{s3}/multinode-{uuid.uuid4().hex[:8]}"
    scratch = {n: tmp_path_factory.mktemp(f"scratch-{n}") for n in ("a", "b")}
    common = {"DOCRAY_HOME": home, "DOCRAY_DB_URL": postgres.url}  # AWS_*: inherited (conftest sets them)
    token = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(token):  # Ray's token auth (docray.compat) looks in ~/.ray, which a node's HOME moves
        common["RAY_AUTH_TOKEN_PATH"] = token

    def node_env(n: str) -> dict:
        for d in ("home", "tmp"):
            (scratch[n] / d).mkdir()
        return {**common, "HOME": str(scratch[n] / "home"), "TMPDIR": str(scratch[n] / "tmp")}

    address_file = Path(get_ray_address_file(None))  # Cluster writes its address there: keep what was
    previous = address_file.read_text() if address_file.exists() else None  # (init_ray reads it)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, resources={"node_a": 1}, env_vars=node_env("a"), include_dashboard=False,
        object_store_memory=200 * 2**20))
    try:
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)
        node_b = cluster.add_node(num_cpus=2, resources={"node_b": 1}, env_vars=node_env("b"),
                                  object_store_memory=200 * 2**20)
        old_env = apply_env({"DOCRAY_HOME": home, "DOCRAY_DB_URL": postgres.url})  # this driver: the same state
        ray.init(address=cluster.address, namespace="docray-multinode", log_to_driver=False, logging_level="ERROR")
        try:
            yield TwoNodes(cluster, home, postgres.url, scratch,
                           {"a": cluster.head_node.node_id, "b": node_b.node_id})
        finally:
            try:
                from ray import serve

                serve.shutdown()
            finally:
                ray.shutdown()
                restore_env(old_env)
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def trained(two_nodes) -> dict:
    """train_recognition at tiny settings, its driver a task on node A and its one worker pinned there."""
    import ray

    @ray.remote(num_cpus=0, resources={"node_a": 0.01}, max_retries=0)
    def train_on_a(argv: list[str]) -> tuple[dict, str]:
        from train_jobs import train_recognition

        return train_recognition.main(argv), ray.get_runtime_context().get_node_id()

    summary, driver_node = ray.get(train_on_a.remote(["--set", *TINY, "worker_resources={node_a: 0.01}"]))
    return {**summary, "driver_node": driver_node}


def test_a_trainer_on_node_a_registers_its_model_in_object_storage(two_nodes, trained):
    from docray.storage.blobs import filesystem
    from docray.storage.registry import ModelRegistry

    assert two_nodes.node_of(trained["driver_node"]) == "a"
    workers = _actor_nodes("RayTrainWorker")
    assert workers and {two_nodes.node_of(n) for n in workers} == {"a"}, workers
    assert trained["registered"] == f"{MODEL}/v0001" and trained["train"].startswith(f"{two_nodes.home}/datasets/")
    reg = ModelRegistry(f"{two_nodes.home}/models")  # read back by a registry of this driver's own
    assert reg.versions(MODEL) == ["v0001"] and reg.load(MODEL)[1]["name"] == "unified_tiny"
    fs, root = filesystem(two_nodes.home)
    keys = [k[len(root) + 1:] for k in fs.find(root)]
    assert f"models/{MODEL}/v0001/model.safetensors" in keys
    assert any(k.startswith("runs/train_recognition/ray/") and k.endswith("/state.pt") for k in keys)  # checkpoint


def _document(seed: int) -> bytes:
    from docray.recognition.data import DOC_OPTIONS
    from docray.synth import generate

    return generate("documents", seed, seed + 1, seed=9, **DOC_OPTIONS).column("image")[0].as_py()


@pytest.fixture(scope="module")
def serve_port(two_nodes) -> int:
    """Serve with its one HTTP proxy on the head (node A): two proxies of one host would share a port."""
    from ray import serve


    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    return port


def test_the_gateway_on_node_b_serves_the_model_trained_on_node_a(two_nodes, trained, serve_port):
    """The gateway and the Recognizer on node B (custom resource `node_b`); Serve's proxy on the head
    (node A) takes the request: the answer names the registered version."""
    import httpx
    from ray import serve

    from serve_apps.gateway import Gateway, GatewayConfig
    from serve_apps.recognition import Recognizer, pinned

    on_b = {"num_cpus": 0.1, "resources": {"node_b": 0.01}}
    cfg = GatewayConfig.model_validate({"recognition": {}})
    app = Gateway.options(ray_actor_options=on_b).bind(cfg.model_dump(), recognition=Recognizer.options(
        ray_actor_options=on_b).bind(pinned(cfg.recognition).model_dump()))
    serve.run(app, name="multinode", route_prefix="/")
    try:
        r = httpx.post(f"http://127.0.0.1:{serve_port}/v1/recognize", files={"image": ("d.png", _document(0), "image/png")},
                       data={"tasks": '["doc_type"]'}, timeout=120)
        assert r.status_code == 200, r.text[:500]
        body = r.json()
        assert body["model"] == f"{MODEL}/v0001" and body["models"] == {MODEL: "v0001"}
        assert body["results"]["doc_type"]["label"]
        for name in ("Gateway", "Recognizer"):
            nodes = _actor_nodes(f"ServeReplica:multinode:{name}")
            assert nodes and {two_nodes.node_of(n) for n in nodes} == {"b"}, (name, nodes)
    finally:
        serve.delete("multinode")


def test_an_archive_rescan_runs_on_both_nodes_and_reports_every_row_once(two_nodes, trained):
    """data_jobs.recognition_archive over ARCHIVE_FILES Parquet files in the bucket, two predictor
    actors (Ray Data spreads them: one per node); the report, in the bucket too, has every id once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_jobs.recognition_archive import RecognizeArchiveConfig, run
    from docray.storage.blobs import filesystem

    archive, out = f"{two_nodes.home}/archive", f"{two_nodes.home}/reports/archive"
    fs, _ = filesystem(archive)
    ids = []
    for f in range(ARCHIVE_FILES):
        rows = [{"id": f"doc-{f}-{k}", "image": _document(10 * f + k)} for k in range(ROWS_PER_FILE)]
        ids += [r["id"] for r in rows]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        fs.pipe_file(f"{archive.removeprefix('s3://')}/part-{f}.parquet", buf.getvalue())
    before = set(_actor_nodes("RecognitionPredictor"))
    res = run(RecognizeArchiveConfig(input=archive, out=out, tasks=["doc_type"], batch_size=2, concurrency=2))
    actors = [n for n in _actor_nodes("RecognitionPredictor") if n not in before]
    assert len(actors) == 2 and {two_nodes.node_of(n) for n in actors} == {"a", "b"}, actors
    assert res["files"] >= 1
    t = pq.read_table(out.removeprefix("s3://"), filesystem=_arrow_s3())
    counts = collections.Counter(t.column("id").to_pylist())
    assert set(counts) == set(ids) and set(counts.values()) == {1}, counts
    assert all(t.column("doc_type_label").to_pylist())


def _arrow_s3():
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region="us-east-1")


DESC = "build:descriptor_tiny"  # random weights, the same in every process (seeded): enough to match exact tiles


def test_a_target_added_on_one_node_is_seen_by_a_replica_on_the_other_within_10_s(two_nodes, serve_port, tmp_path):
    """The cut-out library under the s3:// DOCRAY_HOME, its versions ordered by Postgres (DOCRAY_DB_URL):
    two Screening apps, one pinned to each node; a target added through node A's replica is searched
    by node B's replica within 10 s (it reloads by version), and a picture of one of its tiles is
    flagged there."""
    import time

    from ray import serve

    from docray.screening.embed import Embedder
    from docray.screening.library import Library, cut_target
    from serve_apps.screening import Descriptor, Screening

    root, templates = f"{two_nodes.home}/indexes/screening", ["2x2", "1x3"]
    embed = Embedder.load(DESC)
    lib = Library.create(root, dim=embed.dim, tile_size=32, descriptor=DESC, templates=templates,
                         db_url=two_nodes.db_url, cache_dir=str(tmp_path / "cache"))
    first = cut_target(poster(0), "t0", "src-0", 100, 32, templates, features=lib.feature_spec)
    lib.append(first, embed(first.tiles))
    cfg = {"library": root, "descriptor": DESC, "reload_interval_s": 1.0,
           "screen": {"text_finder": "none", "learn": False, "threshold": 0.99}}
    handles = {}
    for n in ("a", "b"):
        on = {"num_cpus": 0.1, "resources": {f"node_{n}": 0.01}}
        app = Screening.options(ray_actor_options=on).bind(Descriptor.options(ray_actor_options=on).bind(DESC), cfg)
        handles[n] = serve.run(app, name=f"screening-{n}", route_prefix=None)
    try:
        for n in ("a", "b"):
            nodes = _actor_nodes(f"ServeReplica:screening-{n}:Screening")
            assert nodes and {two_nodes.node_of(x) for x in nodes} == {n}, (n, nodes)
        before = handles["b"].library_info.remote().result()
        added = handles["a"].add_target.remote(poster(8), 108, "src-8", "t8").result()
        assert added["tiles_added"] > 0 and added["library_version"] > before["version"], (before, added)
        t0 = time.monotonic()
        while (seen := handles["b"].library_info.remote().result())["version"] < added["library_version"]:
            assert time.monotonic() - t0 < 10, f"node B's replica still on version {seen['version']} after 10 s"
            time.sleep(0.2)
        assert seen["tiles"] == added["library_tiles"]
        newest = Library.open(root, db_url=two_nodes.db_url, cache_dir=str(tmp_path / "cache"))
        tile = newest.tile_image(newest.meta.column("target_id").to_pylist().index("t8"))
        verdict = handles["b"].screen.remote([tile], None, None).result()
        assert verdict["abnormal"] and verdict["matches"][0]["target_id"] == "t8", verdict
    finally:
        for n in ("a", "b"):
            serve.delete(f"screening-{n}")


def test_a_repository_record_written_on_node_a_is_read_whole_on_node_b(two_nodes):
    """ImageRepository() with no arguments on each node: its rows in Postgres (DOCRAY_DB_URL), its
    blobs under the s3:// DOCRAY_HOME; the read is audited in the same database."""
    import ray

    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 256, n, dtype=np.uint8).tobytes() for k, n in
              (("original", 3000), ("processed", 1500), ("compressed", 500))}
    seal = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()

    @ray.remote(num_cpus=0)
    def write() -> tuple[str, str]:
        from docray.storage.repository import ImageRepository

        with ImageRepository() as repo:
            rid = repo.add(images["original"], images["processed"], images["compressed"], [("seal", seal, {"n": 1})],
                           doc_type="id_card", meta={"from": "a"})
            return rid, repo.blobs.root

    @ray.remote(num_cpus=0)
    def read(rid: str) -> tuple[dict, list, list]:
        from docray.storage.repository import ImageRepository

        with ImageRepository() as repo:
            got = {k: repo.get(rid, k, "admin", actor="node-b") for k in images}
            return got, [(a["kind"], a["data"]) for a in repo.attachments(rid, "admin")], repo.audit_log(rid)

    rid, blob_root = ray.get(write.options(resources={"node_a": 0.01}).remote())
    assert blob_root == f"{two_nodes.home}/repository/blobs"
    got, attachments, audit = ray.get(read.options(resources={"node_b": 0.01}).remote(rid))
    assert got == images and attachments == [("seal", seal)]
    assert any(e["actor"] == "node-b" and e["record_id"] == rid for e in audit), audit


def test_no_docray_artifact_in_either_nodes_scratch_folder(two_nodes, trained, local_home_before):
    """After the other cases (the trainer's fixture at least): both scratch folders (each node's HOME
    and TMPDIR) hold no file but temporary ones (TEMPORARY), and the session's local DOCRAY_HOME gained none."""
    left = {n: [f for f in _files(p) if not f.startswith(TEMPORARY)] for n, p in two_nodes.scratch.items()}
    assert left == {"a": [], "b": []}, left
    home, before = local_home_before
    assert _files(home) == before
