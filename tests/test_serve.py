"""`genlab serve`'s HTTP API through FastAPI's test client, on tiny real runs (conftest's `serve_root`).

What is served equals what the command line draws (same seed, same options, same pixels and texts);
every bound and malformed request is a 4xx with one line; nothing outside the served roots can be
named; a cancelled job stops; two requests at once each get their own result and load the run once.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="genlab serve needs the serve extra: pip install 'genlab[serve]'")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx (the test extra)")
from conftest import one_thread  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from genlab.diffusion.samplers import SAMPLERS  # noqa: E402
from genlab.engine.runs import load_run_model  # noqa: E402
from genlab.engine.textgen import generate_text, infill_text  # noqa: E402
from genlab.imageio import sample_picture  # noqa: E402
from genlab.models.specs import FAMILY_SAMPLE_OPTIONS  # noqa: E402
from genlab.serve.app import POLL_SECONDS, create_app  # noqa: E402
from genlab.serve.jobs import Job, ModelCache  # noqa: E402
from genlab.serve.sampling import Limits, form_options  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def client(serve_root):
    with TestClient(create_app([serve_root])) as c:
        yield c


def wait(client, job_id: str, timeout: float = 120.0) -> dict:
    """The job once finished (polled)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        snap = client.get(f"/api/jobs/{job_id}").json()
        if snap["state"] in ("done", "error", "cancelled"):
            return snap
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {snap}")


def sample(client, **body) -> dict:
    r = client.post("/api/sample", json=body)
    assert r.status_code == 200, r.text
    return wait(client, r.json()["id"])


def png(client, job: dict, index: int = 0) -> Image.Image:
    r = client.get(f"/api/jobs/{job['id']}/image/{index}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


# ---------------------------------------------------------------- runs, options, curves, page


def test_form_is_built_from_every_family_declaration():
    for family, declared in FAMILY_SAMPLE_OPTIONS.items():
        form = form_options(family)
        assert [f["name"] for f in form] == [o.name for o in declared]
        assert [(f["minimum"], f["maximum"], f["flag"]) for f in form] == [(o.minimum, o.maximum, o.cli_flag)
                                                                          for o in declared]
    sampler = next(f for f in form_options("diffusion") if f["name"] == "sampler")
    assert sampler["choices"] == sorted(SAMPLERS)


def test_run_list_names_family_data_steps_and_last_eval(client, serve_root):
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == {"gauss", "digits", "text/gpt", "text/mdlm"}
    assert [runs[k]["family"] for k in ("gauss", "digits", "text/gpt", "text/mdlm")] == ["diffusion", "diffusion",
                                                                                        "gpt", "mdlm"]
    assert (runs["gauss"]["data"], runs["digits"]["data"]) == ("8gaussians", "digits")
    assert [runs[k]["steps"] for k in ("gauss", "text/gpt", "text/mdlm")] == [3, 4, 2]
    last = (serve_root / "text/gpt/eval.csv").read_text().splitlines()
    header, row = last[0].split(","), last[-1].split(",")
    assert runs["text/gpt"]["last_eval"]["bits_per_char"] == float(row[header.index("bits_per_char")])
    assert runs["gauss"]["last_eval"] is None


@pytest.mark.parametrize("run,family", [("gauss", "diffusion"), ("digits", "diffusion"), ("text/gpt", "gpt"),
                                        ("text/mdlm", "mdlm")])
def test_options_are_the_family_declaration_with_the_run_defaults(client, run, family):
    body = client.get(f"/api/runs/{run}/options").json()
    assert body["family"] == family
    assert [o["name"] for o in body["options"]] == [o.name for o in FAMILY_SAMPLE_OPTIONS[family]]
    assert (body["text"], body["infill"]) == (family in ("gpt", "mdlm"), family == "mdlm")
    model = load_run_model(Path(client.app.state.roots.run(run).path))
    defaults = {o["name"]: o["default"] for o in body["options"]}
    for name in ("sampler", "steps", "max_new_tokens"):
        if name in defaults:
            assert defaults[name] == getattr(model.spec, name)


def test_curves_are_the_metrics_and_eval_files(client, serve_root):
    curves = client.get("/api/runs/text/gpt/curves").json()["curves"]
    assert curves["eval/bits_per_char"]["step"] == [2.0, 4.0]
    loss = next(k for k in curves if k.startswith("train/loss"))
    assert curves[loss]["step"] == sorted(curves[loss]["step"]) and len(curves[loss]["step"]) >= 3
    assert all(np.isfinite(curves[loss]["value"]))


def test_page_and_its_files_are_served_by_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "genlab serve" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # nothing is fetched from elsewhere: every src/href of the page is this server's
    assert "http://" not in page.text and "https://" not in page.text
    assert "http" not in client.get("/static/style.css").text


# ---------------------------------------------------------------- sampling equals the command line


def test_served_image_equals_genlab_sample_and_carries_its_parameters(client, serve_root, tmp_path):
    job = sample(client, run="digits", n=4, seed=3, options={"sampler": "euler", "steps": 4})
    assert job["state"] == "done", job
    image = png(client, job)
    params = json.loads(image.text["genlab"])
    assert params["options"] == {"sampler": "euler", "steps": 4} and params["seed"] == 3
    model = load_run_model(serve_root / "digits")
    expected = sample_picture(model.sample(4, generator=torch.Generator().manual_seed(3), sampler="euler", steps=4))
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    # the command in the PNG draws the same pixels
    from genlab.cli import main

    argv = shlex.split(image.text["parameters"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "cli.png")
    assert main(argv) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(image))
    downloaded = client.get(f"/api/jobs/{job['id']}/image/0.png?download=true")
    assert downloaded.headers["content-disposition"].startswith("attachment")
    assert client.get(f"/api/jobs/{job['id']}/params.json").json()["cells"][0] == params


def test_progress_streams_previews_and_ends_done(client, monkeypatch):
    """Progress reaches the page over Server-Sent Events: rising, with previews, ending "done". The stream polls
    every POLL_SECONDS and sends the state it finds, so each step here holds its state for three polls (a
    tiny model's draw can otherwise end between two polls, and the stream then sees 0 and 1 only)."""
    update = Job.update

    def held_update(job, **changes):
        update(job, **changes)
        if 0 < changes.get("progress", 0) < 1:
            time.sleep(3 * POLL_SECONDS)

    monkeypatch.setattr(Job, "update", held_update)
    r = client.post("/api/sample", json={"run": "digits", "n": 2, "seed": 0, "options": {"steps": 16}})
    events = []
    with client.stream("GET", f"/api/jobs/{r.json()['id']}/events") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    progress = [e["progress"] for _, e in events]
    assert events[-1][0] == "end" and events[-1][1]["state"] == "done"
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(set(progress)) >= 3
    assert any(e["preview"] for _, e in events)
    preview = client.get(f"/api/jobs/{r.json()['id']}/preview.png")
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == png(
        client, events[-1][1]).size


def test_vector_run_is_a_scatter_plot(client):
    job = sample(client, run="gauss", n=32, seed=0, options={"steps": 3})
    assert job["state"] == "done" and png(client, job).size == (512, 512)


def test_text_runs_equal_generate_and_infill(client, serve_root):
    opts = {"prompt": "RO", "max_new_tokens": 6, "temperature": 0.9}
    job = sample(client, run="text/gpt", n=2, seed=1, options=opts)
    assert job["state"] == "done", job
    assert job["cells"][0]["texts"] == generate_text(serve_root / "text/gpt", n=2, seed=1, **opts)["texts"]
    assert job["cells"][0]["params"]["command"].startswith("genlab generate")
    template = "ROMEO:[MASK:4] soft"  # 15 characters: the tiny model reads 16
    job = sample(client, run="text/mdlm", n=1, seed=2, options={"steps": 4}, text=template)
    assert job["state"] == "done", job
    assert job["cells"][0]["texts"] == [infill_text(serve_root / "text/mdlm", template, steps=4, seed=2)["text"]]
    r = client.post("/api/sample", json={"run": "text/gpt", "text": template})
    assert r.status_code == 400 and "mdlm" in r.json()["error"]


def test_compare_grid_cells_equal_single_requests(client):
    body = {"run": "digits", "n": 2, "seed": 5, "options": {},
            "x": {"name": "sampler", "values": ["euler", "heun"]}, "y": {"name": "steps", "values": ["2", "3"]}}
    r = client.post("/api/compare", json=body)
    assert r.status_code == 200, r.text
    job = wait(client, r.json()["id"])
    assert job["state"] == "done"
    assert [(c["x"], c["y"]) for c in job["cells"]] == [("euler", "2"), ("heun", "2"), ("euler", "3"), ("heun", "3")]
    for k, cell in enumerate(job["cells"]):
        single = sample(client, run="digits", n=2, seed=5, options={"sampler": cell["x"], "steps": cell["y"]})
        assert np.array_equal(np.asarray(png(client, job, k)), np.asarray(png(client, single)))
    whole = png(client, job, len(job["cells"]))
    cell = png(client, job, 0)
    assert whole.width > 2 * cell.width and whole.height > 2 * cell.height
    runs = client.post("/api/compare", json={"run": "digits", "n": 2, "x": {"name": "run", "values": ["gauss",
                                                                                                     "digits"]}})
    assert [c["params"]["run"] for c in wait(client, runs.json()["id"])["cells"]] == ["gauss", "digits"]


# ---------------------------------------------------------------- bounds and malformed requests


@pytest.mark.parametrize("body,words", [
    ({"n": 0}, "n=0 must be between 1 and 64"),
    ({"n": 65}, "n=65 must be between 1 and 64"),
    ({"options": {"steps": 251}}, "over this server's limit of 250"),
    ({"options": {"steps": 0}}, "--steps expects a positive integer"),
    ({"options": {"steps": "many"}}, "--steps expects a positive integer, got 'many'"),
    ({"options": {"sampler": "eulr"}}, 'did you mean "euler"'),
    ({"options": {"temperature": 2}}, "does not apply to the diffusion family"),
    ({"run": "text/gpt", "options": {"max_new_tokens": 513}}, "over this server's limit of 512"),
    ({"run": "text/gpt", "options": {"prompt": "x" * 2001}}, "prompt has 2001 characters"),
    ({"run": "text/mdlm", "text": "x" * 2001}, "infill text has 2001 characters"),
])
def test_every_bound_is_a_400_naming_it(client, body, words):
    r = client.post("/api/sample", json={"run": "digits", **body})
    assert r.status_code == 400 and words in r.json()["error"], r.text


def test_compare_axes_are_bounded(client):
    r = client.post("/api/compare", json={"run": "digits", "x": {"name": "seed", "values": [1, 2, 3, 4, 5]}})
    assert r.status_code == 400 and "limit of 4" in r.json()["error"]
    r = client.post("/api/compare", json={"run": "digits", "x": {"name": "seed", "values": ["-1"]}})
    assert r.status_code == 400 and "non-negative integer" in r.json()["error"]


@pytest.mark.parametrize("content,status,words", [
    (b'{"run": "digits", "n": ', 400, "malformed JSON body"),
    (b"[1, 2]", 400, "malformed JSON body"),
    (b'{"run": "digits", "n": "lots"}', 422, "n: Input should be a valid integer"),
    (b'{"run": "digits", "rm": "-rf"}', 422, "rm: Extra inputs are not permitted"),
    (b'{"n": 2}', 422, "run: Field required"),
])
def test_malformed_bodies_are_one_line_4xx(client, content, status, words):
    r = client.post("/api/sample", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status and words in r.json()["error"], r.text


def test_a_failing_job_is_its_error_and_the_server_goes_on(client):
    job = sample(client, run="digits", n=2, options={"label": 3})
    assert job["state"] == "error" and "class-conditional" in job["message"]
    assert sample(client, run="digits", n=2, options={"steps": 2})["state"] == "done"
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get(f"/api/jobs/{job['id']}/image/0.png").status_code == 404


# ---------------------------------------------------------------- nothing outside the roots


def test_run_names_cannot_leave_the_served_roots(client, serve_root):
    outside = str(serve_root / "digits")
    for name in ["../digits", "..%2Fdigits", "%2e%2e/%2e%2e/etc", "text/%2e%2e/digits",
                 outside.lstrip("/"), "%2F" + outside.lstrip("/").replace("/", "%2F")]:
        r = client.get(f"/api/runs/{name}/options")
        assert r.status_code == 404, (name, r.text)
    for name in ["../digits", outside, "/etc", "text/../digits", "text"]:
        r = client.post("/api/sample", json={"run": name})
        assert r.status_code == 404 and "is served" in r.json()["error"], (name, r.text)


def test_symlinks_out_of_a_root_are_not_served(serve_root, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(serve_root / "gauss", root / "escape")  # a run outside the root, linked in
    os.symlink(serve_root / "text", root / "group")  # a folder of runs outside the root
    report = root / "cmp"
    (report / "figures").mkdir(parents=True)
    (report / "report.html").write_text("<html>report</html>")
    (report / "figures" / "a.png").write_bytes(b"png")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    os.symlink(secret, report / "figures" / "link.png")
    with TestClient(create_app([root])) as c:
        assert c.get("/api/runs").json()["runs"] == []
        assert c.get("/api/runs/escape/options").status_code == 404
        assert c.get("/api/runs/group/gpt/options").status_code == 404
        assert c.get("/api/reports").json()["reports"] == [{"id": "cmp", "url": "/reports/cmp/report.html"}]
        assert c.get("/reports/cmp/report.html").text == "<html>report</html>"
        assert c.get("/reports/cmp/figures/a.png").content == b"png"
        for path in ["cmp/figures/link.png", "cmp/../secret.txt", "cmp/%2e%2e/secret.txt", "cmp/..%2Fsecret.txt",
                     "cmp/figures/%2e%2e/%2e%2e/secret.txt", "cmp/" + str(secret), "cmp/%2F" + str(secret)[1:]]:
            r = c.get(f"/reports/{path}")
            assert r.status_code == 404 and "TOP-SECRET" not in r.text, (path, r.text)


# ---------------------------------------------------------------- cancellation and concurrency


def test_cancel_stops_a_long_job_on_the_server(serve_root):
    app = create_app([serve_root], limits=Limits(max_steps=100_000), workers=1)
    with TestClient(app) as c:
        r = c.post("/api/sample", json={"run": "digits", "n": 8, "options": {"sampler": "heun", "steps": 100_000}})
        job_id = r.json()["id"]
        while c.get(f"/api/jobs/{job_id}").json()["progress"] == 0:
            time.sleep(0.02)
        c.post(f"/api/jobs/{job_id}/cancel")
        job = wait(c, job_id)
        assert job["state"] == "cancelled" and job["progress"] < 0.5 and job["cells"] == []
        # the one worker is free again: the next job runs to the end
        assert sample(c, run="digits", n=1, options={"steps": 2})["state"] == "done"


def test_two_concurrent_requests_get_their_own_results_and_load_the_run_once(serve_root):
    cache = ModelCache()
    results = {}
    with TestClient(create_app([serve_root], cache=cache)) as c:
        def ask(seed):
            results[seed] = sample(c, run="digits", n=3, seed=seed, options={"steps": 3})

        threads = [threading.Thread(target=ask, args=(s,)) for s in (10, 11)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        images = {s: np.asarray(png(c, results[s])) for s in results}
        model = load_run_model(serve_root / "digits")
        for seed, image in images.items():
            expected = sample_picture(model.sample(3, generator=torch.Generator().manual_seed(seed), steps=3))
            assert np.array_equal(image, np.asarray(expected))
    assert cache.loads == 1


def test_model_cache_is_least_recently_used_within_its_bounds(serve_root):
    cache = ModelCache(max_models=2)
    gauss, digits, gpt = (serve_root / p for p in ("gauss", "digits", "text/gpt"))
    first = cache.get(gauss)
    cache.get(digits)
    assert cache.get(gauss) is first and cache.loads == 2
    cache.get(gpt)  # evicts digits, the least recently used
    assert cache.get(gauss) is first and len(cache) == 2 and cache.loads == 3
    cache.get(digits)
    assert cache.loads == 4
    small = ModelCache(max_bytes=1)  # every model is over the budget: only the newest is kept
    small.get(gauss)
    small.get(digits)
    assert len(small) == 1 and small.get(digits) is not None and small.loads == 2


# ---------------------------------------------------------------- the command


def test_serve_command_prints_the_url_and_warns_off_loopback(serve_root, monkeypatch, capsys):
    import uvicorn

    from genlab.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: calls.append((host, port)))
    assert main(["serve", str(serve_root), "--port", "9999"]) == 0
    out = capsys.readouterr()
    assert "http://127.0.0.1:9999/" in out.out and "4 runs" in out.out and out.err == ""
    assert main(["serve", str(serve_root), "--host", "0.0.0.0"]) == 0
    assert "not loopback" in capsys.readouterr().err
    assert calls == [("127.0.0.1", 9999), ("0.0.0.0", 8765)]


def test_loopback_addresses():
    from genlab.cli.serve import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.10", "::", "example.com"]))


def test_serve_without_the_extra_or_a_folder_is_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    from genlab.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'genlab[serve]'" in err


def test_other_hosts_and_oversized_bodies_are_refused(serve_root):
    from genlab.serve.app import LOOPBACK_HOSTS, MAX_BODY_BYTES

    with TestClient(create_app([serve_root], allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/runs").status_code == 200
        assert c.get("/api/runs", headers={"Host": "localhost:8765"}).status_code == 200
        # a page that rebinds its own name to 127.0.0.1 sends that name
        assert c.get("/api/runs", headers={"Host": "attacker.example:8765"}).status_code == 400
        big = json.dumps({"run": "digits", "options": {"prompt": "x" * MAX_BODY_BYTES}})
        r = c.post("/api/sample", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "over 1048576 bytes" in r.json()["error"]
        chunked = c.post("/api/sample", content=iter([b'{"run": "digits"}']))  # no Content-Length
        assert chunked.status_code == 411


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    """Tiny runs of the other families on 8 Gaussians (a few steps each)."""
    from conftest import CONFIGS

    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    root = tmp_path_factory.mktemp("families")
    tiny = ["optim.batch_size=64", "trainer.progress=false", "trainer.sample_every=100000", "trainer.max_steps=2"]
    for family in ("vae", "gan", "rbm"):
        train(load_config(CONFIGS / f"8gaussians-{family}.yaml", [*tiny, "model.hidden=16"]), root / family)
    return root


@pytest.mark.parametrize("family,options", [("vae", {"temperature": 0.5}), ("gan", {}), ("rbm", {"steps": 3})])
def test_other_families_sample_with_their_own_options(family_root, family, options):
    with TestClient(create_app([family_root])) as c:
        body = c.get(f"/api/runs/{family}/options").json()
        assert [o["name"] for o in body["options"]] == [o.name for o in FAMILY_SAMPLE_OPTIONS[family]]
        job = sample(c, run=family, n=8, seed=4, options=options)
        assert job["state"] == "done", job
        model = load_run_model(family_root / family)
        expected = sample_picture(model.sample(8, generator=torch.Generator().manual_seed(4), **options))
        assert np.array_equal(np.asarray(png(c, job)), np.asarray(expected))
        r = c.post("/api/sample", json={"run": family, "options": {"sampler": "euler"}})
        assert r.status_code == 400 and f"does not apply to the {family} family" in r.json()["error"]


def test_a_run_that_trains_on_is_reloaded_at_its_next_checkpoint(gauss_run, tmp_path):
    from conftest import GAUSS_CONFIG, copy_run, train_tiny

    run = copy_run(gauss_run, tmp_path / "gauss")
    cache = ModelCache()
    before = cache.get(run)
    assert cache.get(run) is before and cache.loads == 1
    with one_thread():
        train_tiny(GAUSS_CONFIG, run, "trainer.max_steps=5", resume=True)
    after = cache.get(run)
    assert after is not before and cache.loads == 2 and len(cache) == 1  # the older checkpoint's model is dropped
    changed = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert changed  # two more optimiser steps moved the weights


def test_run_folders_given_themselves_are_served_alone(serve_root, tmp_path):
    from conftest import copy_run

    other = copy_run(serve_root / "digits", tmp_path / "elsewhere" / "digits")
    with TestClient(create_app([serve_root / "digits", other, serve_root / "text" / "gpt"])) as c:
        runs = {r["id"]: r["family"] for r in c.get("/api/runs").json()["runs"]}
        assert runs == {"digits": "diffusion", "digits-2": "diffusion", "gpt": "gpt"}
        assert c.get("/api/runs/gauss/options").status_code == 404  # a sibling of a served run is not served
