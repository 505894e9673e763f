"""suti serve: time from submit to images, and the server's memory at rest and under two queued requests.

Starts ``suti serve`` as its own process on 127.0.0.1 and talks to it over HTTP like the page does:
- ``api_submit_to_images_s``: POST /api/jobs -> poll status (every 50 ms) -> every PNG downloaded;
- ``browser_submit_to_images_s``: in headless Chromium (when installed), click Generate -> every result
  image decoded on the page (the page polls every 400 ms, so this includes up to 0.4 s of polling lag);
- ``rss_mb``: the server process's resident memory (VmRSS, /proc: Linux) at rest after start-up and one
  warm-up request, and its peak while two requests are queued at once.

    python benchmarks/serve.py                      # the shipped world model, a held-out subject's renders
    python benchmarks/serve.py --model tiny         # a tiny random SuTI cascade built here, DreamBench's dog
    python benchmarks/serve.py --model FOLDER --steps 50 --num-images 4
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageDraw

# Run as a script, this folder comes first on sys.path, and its retrieval.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

OUT = Path(__file__).parent / "results" / "serve.json"
DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"


def tiny_checkpoint(folder: Path) -> Path:
    """A tiny SuTI cascade (32 px base with context attention -> 64 px SR) with random, non-zero outputs."""
    import torch

    from suti.pipeline import new_pipeline
    from suti.presets import preset
    from suti.text import TextEncoder
    from suti.tiny import build_tiny_t5

    enc = TextEncoder.from_pretrained(build_tiny_t5(), max_length=16)
    torch.manual_seed(0)
    pipe = new_pipeline(enc, [preset("tiny-base32", text_embed_dim=enc.dim, context=True, stage_name="base"),
                              preset("tiny-sr64", text_embed_dim=enc.dim, stage_name="sr64")])
    for n, p in pipe.cascade.named_parameters():
        if "out" in n and p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    pipe.save_pretrained(folder)
    return folder


def world_photos(tmp: Path, n: int = 3) -> tuple[list[Path], list[str], str]:
    """A held-out world subject's exemplar renders as 256 px JPEGs (what a user of the shipped model uploads),
    their captions, and a prompt of the benchmark."""
    from suti.demo.heldout import heldout_subject

    h = heldout_subject(0)
    paths = []
    for i, im in enumerate(h.exemplar_images(256)[:n]):
        paths.append(tmp / f"render-{i}.jpg")
        im.save(paths[-1], quality=92)
    return paths, h.exemplar_texts[:n], h.prompts[0].prompt


def subject_photos(tmp: Path, n: int = 3) -> list[Path]:
    """Real photos (DreamBench's dog) when the shared data is there, else drawn ones."""
    dog = DREAMBENCH / "dog"
    if dog.is_dir() and len(list(dog.glob("*.jpg"))) >= n:
        return sorted(dog.glob("*.jpg"))[:n]
    paths = []
    for i in range(n):
        im = Image.new("RGB", (640, 480), (200, 190 - 20 * i, 170))
        ImageDraw.Draw(im).ellipse((150 + 60 * i, 120, 400 + 60 * i, 380), fill=(240, 130, 20))
        paths.append(tmp / f"photo-{i}.jpg")
        im.save(paths[-1], quality=92)
    return paths


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, threads: int | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "suti.cli", "serve", "--model", str(model), "--port", str(self.port)]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd)

    def wait_ready(self, client, limit_s=600):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"suti serve exited with {self.proc.returncode}")
            try:
                if client.get(self.url + "/api/info").status_code == 200:
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        raise RuntimeError("suti serve did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_request(client, url, body, poll_s=0.05):
    t0 = time.perf_counter()
    r = client.post(url + "/api/jobs", json=body)
    r.raise_for_status()
    job = r.json()
    while job["status"] not in ("done", "error", "cancelled"):
        time.sleep(poll_s)
        job = client.get(f"{url}/api/jobs/{job['id']}").json()
    if job["status"] != "done":
        raise RuntimeError(f"request failed: {job}")
    for img in job["images"]:
        Image.open(io.BytesIO(client.get(url + img["url"]).content)).load()
    return time.perf_counter() - t0, job


def browser_runs(url, photos, body, repeats):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "playwright not installed"
    if chromium is None:
        return None, "no chromium (apt-get install chromium)"
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium,
                                    args=["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#model-name:not(:empty)")
        page.set_input_files("#photo-input", [str(p) for p in photos])
        page.wait_for_function(f"() => document.querySelectorAll('#photos .photo').length == {len(photos)}",
                               timeout=120_000)
        page.fill("#prompt", body["prompt"])
        page.fill("#num-images", str(body["num_images"]))
        page.fill("#steps", str(body["steps"]))
        page.fill("#seed", str(body["seed"]))
        for _ in range(repeats):
            page.evaluate("document.getElementById('results').replaceChildren()")
            t0 = time.perf_counter()
            page.click("#generate")
            page.wait_for_function(
                f"() => {{ const ims = [...document.querySelectorAll('#results figure.result img')];"
                f" return ims.length == {body['num_images']} && ims.every(i => i.complete && i.naturalWidth > 0); }}",
                timeout=600_000, polling=20)
            times.append(time.perf_counter() - t0)
        browser.close()
    return times, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="checkpoint folder, or 'tiny' for a tiny random one built here (default: the shipped model)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--num-images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="passed to suti serve --threads")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    import httpx

    from retrieval.atomic import atomic_write_json

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="suti-serve-bench-") as tmp:
        tmp = Path(tmp)
        if args.model == "tiny":
            model = tiny_checkpoint(tmp / "ckpt")
            label = "tiny random SuTI (tiny-base32 + context -> tiny-sr64, tiny T5)"
            photos = subject_photos(tmp)
            captions, prompt = ["a photo of my dog"] * len(photos), "a dog on the beach"
            photo_label = [p.name for p in photos] if DREAMBENCH.is_dir() else "drawn 640x480 JPEGs"
        else:
            from suti.demo.showcase import SHIPPED_WORLD_SUTI

            model = Path(args.model or SHIPPED_WORLD_SUTI)
            label = args.model or "suti/demo/assets/world_suti (shipped)"  # recorded without this machine's path
            photos, captions, prompt = world_photos(tmp)
            photo_label = "held-out world subject 0: 3 exemplar renders, 256 px JPEGs"
        server = Server(model, args.threads)
        try:
            with httpx.Client(timeout=600) as client:
                server.wait_ready(client)
                info = client.get(server.url + "/api/info").json()
                rss_start = rss_mb(server.proc.pid)
                ids = []
                for path in photos:
                    r = client.post(server.url + "/api/uploads", content=path.read_bytes(),
                                    headers={"X-Filename": path.name})
                    r.raise_for_status()
                    ids.append(r.json()["id"])
                body = {"prompt": prompt, "num_images": args.num_images, "steps": args.steps, "seed": 0,
                        "subjects": [{"upload": i, "caption": c} for i, c in zip(ids, captions)]}
                first_s, _ = run_request(client, server.url, body)  # one-off costs (allocations, caches)
                time.sleep(1.0)
                rss_rest = rss_mb(server.proc.pid)
                api_times = [run_request(client, server.url, body)[0] for _ in range(args.repeats)]

                # Two requests at once: the second waits; sample the server's memory until both are done.
                peak, stop = [rss_mb(server.proc.pid)], threading.Event()

                def sample_rss():
                    while not stop.is_set():
                        peak.append(rss_mb(server.proc.pid))
                        time.sleep(0.02)

                sampler = threading.Thread(target=sample_rss)
                sampler.start()
                t0 = time.perf_counter()
                jobs = [client.post(server.url + "/api/jobs", json=body).json() for _ in range(2)]
                positions = [j["position"] for j in jobs]
                finished = []
                for j in jobs:
                    while j["status"] not in ("done", "error", "cancelled"):
                        time.sleep(0.05)
                        j = client.get(f"{server.url}/api/jobs/{j['id']}").json()
                    finished.append(round(time.perf_counter() - t0, 3))
                stop.set()
                sampler.join()
                rss_after = rss_mb(server.proc.pid)
                browser_times, browser_note = browser_runs(server.url, photos, body, args.repeats)
        finally:
            server.stop()
    load_end = os.getloadavg()
    import torch

    result = {
        "what": "suti serve on this machine: submit -> images, and server RSS",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads_default": torch.get_num_threads(), "server_threads": args.threads,
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in load_end],
                    "note": "load_average_start/end: above 1 per core, other jobs shared the cores"},
        "model": label,
        "stages": info["stages"],
        "photos": photo_label,
        "request": {k: v for k, v in body.items() if k != "subjects"} | {"subjects": len(ids)},
        "first_request_s": round(first_s, 3),
        "api_submit_to_images_s": {"median": round(statistics.median(api_times), 3),
                                   "runs": [round(t, 3) for t in api_times]},
        "browser_submit_to_images_s": (None if browser_times is None else
                                       {"median": round(statistics.median(browser_times), 3),
                                        "runs": [round(t, 3) for t in browser_times]}),
        "browser_note": browser_note,
        "two_queued": {"positions_at_submit": positions, "both_done_after_s": finished},
        "rss_mb": {"after_start": round(rss_start, 1), "at_rest": round(rss_rest, 1),
                   "peak_two_queued": round(max(peak), 1), "after_two_queued": round(rss_after, 1)},
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    print(result)


if __name__ == "__main__":
    main()
