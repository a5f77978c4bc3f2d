"""Load check of `genlab serve`: N concurrent sampling requests on loopback against one server.

Starts the real command (`genlab serve ROOT --port P` in a subprocess), sends N sampling requests at
once from N client threads (each: POST /api/sample, follow its Server-Sent Events to the end, fetch the
PNG), and reports latency percentiles (median, p90, p99) from POST to PNG, beside the latency of one
request alone. Every response is checked: the job is done, the PNG decodes, its parameters (text chunk)
are the request's, and two requests with the same seed got byte-identical pixels while different
seeds did not.

    python benchmarks/serve_load.py                       # trains a small 8gaussians run first (~10 s)
    python benchmarks/serve_load.py runs/ --run digits-diffusion --requests 32 --n 16 --steps 20
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, warn_if_busy, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_small_run(root: Path, steps: int) -> str:
    """A small 8gaussians diffusion run in root/gauss; returns its id."""
    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    cfg = load_config(REPO / "configs" / "8gaussians-diffusion.yaml",
                      [f"trainer.max_steps={steps}", "trainer.progress=false", "trainer.sample_every=100000"])
    train(cfg, root / "gauss")
    return "gauss"


def start_server(root: Path, port: int) -> subprocess.Popen:
    """`genlab serve ROOT --port PORT` in a subprocess, once it answers."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "genlab.cli", "serve", str(root), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer within 120 s")


def one_request(base: str, body: dict) -> dict:
    """POST a sample request, follow its events to the end, fetch its PNG; latency and the checked result."""
    start = time.perf_counter()
    with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
        r = client.post("/api/sample", json=body)
        r.raise_for_status()
        job_id, last = r.json()["id"], None
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    last = json.loads(line[6:])
        if last is None or last["state"] != "done":
            return {"ok": False, "why": f"job ended {last and last['state']}: {last and last['message']}"}
        png = client.get(f"/api/jobs/{job_id}/image/0.png").content
    seconds = time.perf_counter() - start
    image = Image.open(io.BytesIO(png))
    params = json.loads(image.text["genlab"])
    ok = params["seed"] == body["seed"] and params["n"] == body["n"] and params["options"] == body["options"]
    return {"ok": ok, "why": "" if ok else f"parameters {params} differ from the request {body}",
            "seconds": seconds, "pixels": np.asarray(image), "seed": body["seed"]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", help="folder of runs to serve (default: train a small run into a temp dir)")
    p.add_argument("--run", help="run id to sample (default: the first served run)")
    p.add_argument("--requests", type=int, default=16, help="concurrent requests (default 16)")
    p.add_argument("--n", type=int, default=16, help="samples per request (default 16)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (diffusion; default 20)")
    p.add_argument("--train-steps", type=int, default=300, help="steps of the small run trained without a root")
    p.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = p.parse_args()
    warn_if_busy()
    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
        root, run = Path(tmp.name), train_small_run(Path(tmp.name), args.train_steps)
    else:
        root, run = Path(args.root), args.run
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(root, port)
    try:
        run = run or httpx.get(base + "/api/runs").json()["runs"][0]["id"]
        family = httpx.get(f"{base}/api/runs/{run}/options").json()["family"]
        options = {"steps": args.steps} if family == "diffusion" else {}

        def body(seed):
            return {"run": run, "n": args.n, "seed": seed, "options": options}

        one_request(base, body(10_000))  # loads the model once: the cache is warm for what follows
        alone = [one_request(base, body(10_001 + i)) for i in range(3)]
        results: list[dict | None] = [None] * args.requests
        # seeds repeat in pairs: two requests with one seed must get the same pixels, other seeds other pixels
        seeds = [i // 2 for i in range(args.requests)]

        def client(i):
            try:
                results[i] = one_request(base, body(seeds[i]))
            except Exception as err:  # a failed request is counted, not raised in a thread
                results[i] = {"ok": False, "why": f"{type(err).__name__}: {err}"}

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.requests)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall
    finally:
        server.terminate()
        server.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    failures = [r["why"] for r in results if not r["ok"]]
    done = [r for r in results if r["ok"]]
    by_seed: dict[int, list[np.ndarray]] = {}
    for r in done:
        by_seed.setdefault(r["seed"], []).append(r["pixels"])
    same = all(np.array_equal(a, b) for imgs in by_seed.values() for a, b in zip(imgs, imgs[1:]))
    firsts = [imgs[0] for imgs in by_seed.values()]
    distinct = all(not np.array_equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1:])
    lat = [r["seconds"] for r in done]
    summary = {
        "run": run, "family": family, "requests": args.requests, "n": args.n, "options": options,
        "ok": len(done), "failures": failures, "same_seed_same_pixels": same, "other_seeds_other_pixels": distinct,
        "alone_median_s": statistics.median(r["seconds"] for r in alone),
        "median_s": percentile(lat, 50) if lat else None, "p90_s": percentile(lat, 90) if lat else None,
        "p99_s": percentile(lat, 99) if lat else None, "wall_s": wall,
        "requests_per_s": len(done) / wall if wall > 0 else None, "environment": environment("cpu"),
    }
    write_json(Path(args.out), summary)
    print(markdown_table(["requests", "n", "ok", "alone median s", "median s", "p90 s", "p99 s", "wall s", "req/s"],
                         [[args.requests, args.n, len(done), summary["alone_median_s"], summary["median_s"],
                           summary["p90_s"], summary["p99_s"], wall, summary["requests_per_s"]]]))
    print(f"same seed, same pixels: {same}; other seeds, other pixels: {distinct}; failures: {failures or 'none'}")
    print(f"wrote {args.out}")
    return 0 if not failures and same and distinct else 1


if __name__ == "__main__":
    sys.exit(main())
