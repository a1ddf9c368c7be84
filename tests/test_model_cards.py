"""Model cards and versions: the registry writes a card with each version, trainers fill it (commit,
datasets, hardware, wall time), `docray models list|show` print it, and the Serve apps load the
version their config pins and name it in every answer."""
import asyncio
import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from docray.cli import main as docray
from docray.models import build_model
from docray.storage.blobs import NotFound
from docray.storage.registry import ModelRegistry


def _save(reg: ModelRegistry, name: str, seed: int, factory: str = "unified_tiny", **kw) -> str:
    torch.manual_seed(seed)
    model = build_model(factory)
    return reg.save(name, model, {**model.docray_spec}, **kw)


def _parquet(folder, rows: int, n_files: int = 2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        pq.write_table(pa.table({"id": [f"r{i}-{j}" for j in range(rows)], "x": list(range(rows))}),
                       folder / f"part-{i:05d}.parquet")
    return folder


def test_save_writes_a_card_and_card_reads_it_back(home):
    reg = ModelRegistry()
    state = {"w": torch.zeros(2)}
    v1 = reg.save("m", state, {"name": "x"}, {"val_loss": 0.5})  # no card given: still when it was saved
    v2 = reg.save("m", state, {"name": "x"}, {"val_loss": 0.3}, card={"commit": "abc", "key_metric": "val_loss"})
    card = reg.card("m")
    assert (card["name"], card["version"], card["commit"]) == ("m", v2, "abc")
    assert card["config"] == {"name": "x"} and card["metrics"] == {"val_loss": 0.3}
    assert card["saved_at"].endswith("Z")
    assert json.loads((home / "models" / "m" / v2 / "card.json").read_text())["commit"] == "abc"
    assert reg.card("m", v1)["metrics"] == {"val_loss": 0.5} and "commit" not in reg.card("m", v1)
    assert reg.pin("m") == v2 and reg.pin("m", v1) == v1 and reg.pin("none-yet") == "latest"
    import hashlib  # the weights' digest names the version across registries (v0001 is per registry)

    sha = hashlib.sha256((home / "models" / "m" / v2 / "model.safetensors").read_bytes()).hexdigest()
    assert card["weights_sha256"] == sha == reg.digest("m") == reg.digest("m", v1)  # same weights, same digest
    v3 = reg.save("m", {"w": torch.ones(2)}, {"name": "x"})
    (home / "models" / "m" / v3 / "card.json").write_text("{}")  # a version saved before cards kept it
    assert reg.digest("m", v3) == hashlib.sha256((home / "models" / "m" / v3 / "model.safetensors").read_bytes()).hexdigest() != sha
    with pytest.raises(NotFound, match="no version 'v0009'"):
        reg.pin("m", "v0009")
    with pytest.raises(NotFound, match="no model named 'nope'"):
        reg.card("nope")
    with pytest.raises(ValueError, match="overwrite"):
        reg.save("m", state, {"name": "x"}, extra_files={"card.json": b"{}"})


def test_dataset_fingerprint_follows_the_files(tmp_path):
    from train_jobs.common import dataset_fingerprint

    d = _parquet(tmp_path / "a", rows=5)
    (d / "_SUCCESS").write_text("")  # not a Parquet file: not part of the dataset
    fp = dataset_fingerprint(str(d))
    assert (fp["files"], fp["rows"], fp["uri"]) == (2, 10, str(d)) and fp["bytes"] > 0
    same_elsewhere = dataset_fingerprint(str(_parquet(tmp_path / "b", rows=5)))
    assert same_elsewhere["sha256"] == fp["sha256"]
    assert dataset_fingerprint(str(_parquet(tmp_path / "a", rows=6)))["sha256"] != fp["sha256"]  # rewritten
    one = dataset_fingerprint(str(d / "part-00000.parquet"))
    assert (one["files"], one["rows"]) == (1, 6)


def test_git_commit_and_the_jobs_runtime_env(tmp_path, monkeypatch):
    from cluster.submit import git_commit, runtime_env

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (repo / "untracked.txt").write_text("notes")
    assert git_commit(str(repo)) == head  # untracked files do not make it dirty
    (repo / "a.py").write_text("x = 2\n")
    assert git_commit(str(repo)) == f"{head}-dirty"
    assert git_commit(str(tmp_path)) == ""  # not a checkout
    monkeypatch.delenv("DOCRAY_COMMIT", raising=False)
    assert runtime_env(str(repo), None)["env_vars"] == {"DOCRAY_COMMIT": f"{head}-dirty"}
    assert runtime_env(str(repo), {"DOCRAY_COMMIT": "mine"})["env_vars"] == {"DOCRAY_COMMIT": "mine"}
    assert "env_vars" not in runtime_env(None, None)


def test_a_trainers_registered_version_carries_its_card(home, tmp_path, monkeypatch):
    """train_screening's registration (the path every trainer takes: `model_card` then `save(card=)`)."""
    import time

    from PIL import Image

    from train_jobs.train_screening import ScreeningTrainConfig, save_descriptor

    monkeypatch.setenv("DOCRAY_COMMIT", "0123abc-dirty")
    train, val = _parquet(tmp_path / "train", rows=4), _parquet(tmp_path / "val", rows=2, n_files=1)
    cfg = ScreeningTrainConfig(model="descriptor_tiny", train=str(train), val=str(val), background_pictures=1,
                                background_distractors=1, to_registry=True, num_workers=1)
    model = build_model("descriptor_tiny")
    res = save_descriptor(model, model.docray_spec, {"val_top1": 0.75, "loss": 1.5}, cfg, str(tmp_path / "run"),
                          [Image.new("RGB", (96, 96), "gray")], started=time.time() - 5,
                          data={"train": str(train), "val": str(val), "background": ""})
    card = ModelRegistry().card("descriptor", res["registry_version"])
    assert card["commit"] == "0123abc-dirty" and card["job"] == "train_jobs.train_screening"
    assert card["job_config"]["train"] == str(train) and card["job_config"]["model"] == "descriptor_tiny"
    assert set(card["datasets"]) == {"train", "val"} and card["datasets"]["train"]["rows"] == 8
    assert card["hardware"]["num_workers"] == 1 and card["hardware"]["gpu"] is None
    assert card["wall_time_s"] >= 5 and card["key_metric"] == "val_top1" and card["metrics"]["val_top1"] == 0.75
    assert card["config"] == model.docray_spec


def test_models_list_and_show(home):
    reg, runner = ModelRegistry(), CliRunner()
    reg.save("enc", {"w": torch.zeros(1)}, {"name": "x"}, {"val_loss": 0.25, "loss": 0.2},
             card={"commit": "f" * 40 + "-dirty", "key_metric": "val_loss", "wall_time_s": 12.5, "job": "train_jobs.j",
                   "hardware": {"num_workers": 2, "cpus_per_worker": 1, "gpu": None, "cluster_cpus": 2,
                                "cluster_gpus": 0},
                   "datasets": {"train": {"uri": "/d", "files": 2, "bytes": 4096, "rows": 40, "sha256": "ab" * 32}}})
    reg.save("enc", {"w": torch.zeros(1)}, {"name": "x"}, {"val_loss": 0.125})
    res = runner.invoke(docray, ["models", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("NAME") and len(lines) == 3
    assert "v0001" in lines[1] and "val_loss=0.25" in lines[1] and "ffffffffffff-dirty" in lines[1]
    assert "v0002" in lines[2] and "val_loss=0.125" in lines[2]
    rows = [json.loads(ln) for ln in runner.invoke(docray, ["models", "list", "enc", "--json"]).output.splitlines()]
    assert [r["version"] for r in rows] == ["v0001", "v0002"] and rows[0]["value"] == 0.25

    shown = runner.invoke(docray, ["models", "show", "enc:v0001"])
    assert shown.exit_code == 0, shown.output
    assert reg.digest("enc", "v0001")[:12] in lines[1]
    for part in ("enc v0001", "f" * 40 + "-dirty", "12.5 s", "2 worker(s)", "/d  (2 files, 4.0 KB, 40 rows",
                 "* val_loss: 0.25", "sha256 " + reg.digest("enc", "v0001")):
        assert part in shown.output, part
    card = json.loads(runner.invoke(docray, ["models", "show", "enc", "--json"]).output)
    assert card["version"] == "v0002" and card["metrics"] == {"val_loss": 0.125}

    for args, message in ((["show", "enc:v0007"], "has no version 'v0007'"),
                          (["show", "nope"], "no model named 'nope'"),
                          (["list", "nope"], "no model named 'nope'"), (["show", "bad/name"], "model name")):
        res = runner.invoke(docray, ["models", *args])
        assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, (args, res.output)


def test_recognition_loads_the_pinned_version_and_names_it(home):
    from PIL import Image

    from serve_apps.recognition import RecognitionAppConfig, Recognizer, backend

    reg = ModelRegistry()
    v1, v2 = _save(reg, "t-uni", 0), _save(reg, "t-uni", 1)
    pinned_args = backend(RecognitionAppConfig(model="t-uni"))._bound_deployment.init_args[0]
    assert pinned_args["version"] == v2  # latest, fixed when the app is built
    rec = Recognizer.func_or_class({"model": "t-uni", "version": v1, "select": "all"})  # the class, without Serve
    saved, _, _ = reg.load("t-uni", v1)
    loaded = rec.predictor.model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)

    async def direct(request):  # @serve.batch needs a replica: answer one request unbatched
        return rec._one(request)

    rec.recognize_batch = direct
    answer = asyncio.run(rec.recognize(Image.new("RGB", (64, 64), "white"), {}, ["doc_type"], None))
    assert answer["models"] == {"t-uni": v1} and answer["model"] == f"t-uni/{v1}" and "doc_type" in answer["results"]
    assert rec.info()["models"] == {"t-uni": v1}
    with pytest.raises(NotFound, match="no version 'v0042'"):
        backend(RecognitionAppConfig(model="t-uni", version="v0042"))


def test_other_apps_pin_and_name_their_versions(home, tmp_path):
    from serve_apps import privacy, regen, screening

    reg = ModelRegistry()
    for name in ("mask_recognizer_masked", "descriptor", "regen"):
        for seed in (0, 1):
            reg.save(name, {"w": torch.full((1,), float(seed))}, {"name": "x"})
    cfg = privacy.PrivacyAppConfig()
    assert privacy.pinned(cfg).masked == "registry:mask_recognizer_masked@v0002"
    pinned = privacy.pinned(cfg.model_copy(update={"masked": "registry:mask_recognizer_masked@v0001"}))
    assert privacy.models_of(pinned) == {"mask_recognizer_masked": "v0001"}
    assert privacy.models_of(cfg.model_copy(update={"masked": "/m"})) == {"mask_recognizer_masked": "/m"}

    assert screening.pin_descriptor("registry:descriptor") == "registry:descriptor@v0002"
    assert screening.pin_descriptor("registry:descriptor@v0001") == "registry:descriptor@v0001"
    assert screening.pin_descriptor("registry:descriptor:v0001") == "registry:descriptor@v0001"  # older libraries' spelling
    assert screening.pin_descriptor("build:descriptor_tiny") == "build:descriptor_tiny"
    with pytest.raises(NotFound):
        screening.pin_descriptor("registry:descriptor@v0003")

    c = regen.RegenAppConfig()
    assert regen.models_of(regen.pinned(c)) == {"regen": "v0002"}
    assert regen.models_of(regen.pinned(c.model_copy(update={"version": "v0001"}))) == {"regen": "v0001"}
    assert regen.models_of(c.model_copy(update={"untrained": "regen_tiny"})) == {"regen": "untrained:regen_tiny"}
    args = [d._bound_deployment.init_args[-1] for d in
            [regen.backend(c), *regen.backend(c)._bound_deployment.init_args[:3]]]
    assert {a["version"] for a in args} == {"v0002"}  # the four deployments load one version
