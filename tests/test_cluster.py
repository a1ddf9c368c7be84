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


def test_each_training_call_is_its_own_run_unless_resumed(ray_cluster, tmp_path):
    """Ray Train resumes a run whose name has checkpoints: a second call with the same `out` and
    another config (the bug: tasks=[doc_type,...] after all tasks restored a 7-task checkpoint)
    must start fresh; a call that asks to resume a run by its name continues it."""
    from pathlib import Path
    from types import SimpleNamespace

    from train_jobs.common import run_trainer

    def _checkpointing_loop(config):  # defined here: workers cannot import a test module
        """Reports one checkpoint holding `width`, and the width of the checkpoint it started from."""
        import tempfile

        import ray.train

        ckpt = ray.train.get_checkpoint()
        seen = int(open(f"{ckpt.path}/width").read()) if ckpt else -1
        with tempfile.TemporaryDirectory() as d:
            open(f"{d}/width", "w").write(str(config["width"]))
            ray.train.report({"seen": seen}, checkpoint=ray.train.Checkpoint.from_directory(d))

    cfg = SimpleNamespace(use_gpu=False, num_workers=1, cpus_per_worker=0.5, max_failures=0, out=str(tmp_path))
    first = run_trainer(_checkpointing_loop, cfg, "job", loop_config={"width": 7})
    second = run_trainer(_checkpointing_loop, cfg, "job", loop_config={"width": 2})
    assert first.metrics["seen"] == -1 and second.metrics["seen"] == -1  # nothing restored across calls
    assert len(list((tmp_path / "ray").glob("job-*"))) == 2
    first_run = Path(first.checkpoint.path).relative_to(tmp_path / "ray").parts[0]
    again = run_trainer(_checkpointing_loop, cfg, first_run, loop_config={"width": 7}, resume=True)
    assert again.metrics["seen"] == 7  # resume=True with the first run's name continues it


def test_a_trainer_that_must_wait_for_cpus_says_so(ray_cluster, capsys):
    from train_jobs.common import say_if_waiting

    say_if_waiting(0.0)
    assert capsys.readouterr().err == ""
    say_if_waiting(3)  # the cluster has 2: only an autoscaler could start these workers
    err = capsys.readouterr().err
    assert "waiting for 3 CPUs" in err and "2 in all" in err


def test_waiting_without_the_logs_says_the_job_still_runs():
    import io

    from cluster.submit import wait_for

    class Client:  # RUNNING for three polls, then SUCCEEDED
        polls = 0

        def get_job_status(self, job_id):
            self.polls += 1
            return "RUNNING" if self.polls <= 3 else "SUCCEEDED"

        def get_job_logs(self, job_id):  # a progress bar redrawn after \r: the heartbeat shows its latest state
            return "loading\nepoch 0:  10%|#  | 1/10\repoch 0:  50%|#####  | 5/10\n\n"

    out = io.StringIO()
    assert wait_for(Client(), "j", follow_logs=False, poll_s=0.01, heartbeat_s=0.005, out=out) == "SUCCEEDED"
    assert out.getvalue().count("... RUNNING,") >= 2
    assert out.getvalue().endswith(" min: epoch 0:  50%|#####  | 5/10\n")
    quiet = io.StringIO()
    wait_for(Client(), "j", follow_logs=False, poll_s=0.01, out=quiet)
    assert quiet.getvalue() == ""
