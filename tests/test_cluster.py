"""Local Ray: embedded start, address discovery, fractional actor resources, the synth job through Ray."""
import pyarrow as pa
import pytest

from cluster.local import actor_resources, init_ray, ray_address


def test_ray_address_prefers_env(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert ray_address() == "ray://head:10001"


def test_init_ray_is_idempotent(ray_cluster):
    res = init_ray()  # already up (the fixture): returns resources, starts nothing
    assert res["CPU"] == 2


def test_actor_resources_leave_room_for_tasks(ray_cluster):
    two = actor_resources(2)
    assert two["num_cpus"] < 1.0 and 2 * two["num_cpus"] <= 2 - 0.5 + 1e-9
    assert "num_gpus" not in two  # no GPU on this cluster
    assert actor_resources(1)["num_cpus"] == 1.0
    assert actor_resources(100)["num_cpus"] >= 0.05
    with pytest.raises(RuntimeError, match="no GPU"):
        actor_resources(2, use_gpu=True)


def test_synth_through_ray_equals_local(ray_cluster, tmp_path):
    from data_jobs.synth_corpus import generate_local, generate_with_ray
    from docray.storage.datasets import read_table

    generate_with_ray("masks", 30, str(tmp_path / "ray"), seed=3, rows_per_block=7, rows_per_shard=10)
    generate_local("masks", 30, str(tmp_path / "local"), seed=3, rows_per_shard=10)
    a, b = (read_table(str(tmp_path / d)) for d in ("ray", "local"))
    key = [("id", "ascending")]
    assert a.num_rows == b.num_rows == 30
    assert a.sort_by(key).equals(b.sort_by(key))
    import ray

    assert ray.data.read_parquet(str(tmp_path / "ray")).count() == 30
