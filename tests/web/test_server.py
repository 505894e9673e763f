"""suti serve without a browser: the JSON API through FastAPI's TestClient, on a tiny SuTI checkpoint."""
import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from suti.serve import ServeSettings
from suti.serve.png import read_png_settings

from web_helpers import GatedPipe, render_subject, wait_done

pytest.importorskip("fastapi", reason="suti serve needs the web extra: pip install -e '.[web]'")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from suti.serve.app import create_app  # noqa: E402


@contextlib.contextmanager
def serve(pipe, raise_server_exceptions=True, **settings):
    app = create_app(pipe, ServeSettings(**settings), model_name="tiny")
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        yield client, app


def upload(client, data: bytes, name="photo.jpg"):
    return client.post("/api/uploads", content=data, headers={"X-Filename": name,
                                                               "Content-Type": "application/octet-stream"})


def test_page_and_info(tiny_suti):
    with serve(tiny_suti) as (client, _):
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'id="photo-input"' in page.text and "/static/app.js" in page.text
        assert client.get("/static/app.js").status_code == 200
        info = client.get("/api/info").json()
        assert info["uses_context"] and [s["name"] for s in info["stages"]] == ["base", "sr64"]
        assert info["limits"]["max_photos"] == 5 and info["database"] is None


def test_generate_with_three_photos_matches_the_pipeline(tiny_suti, tmp_path):
    photos = [render_subject(0), render_subject(1, size=(200, 300), mode="RGBA", fmt="PNG"),
              render_subject(2, mode="CMYK")]
    names = ["a.jpg", "b.png", "c.jpg"]
    with serve(tiny_suti) as (client, app):
        ups = [upload(client, p, n) for p, n in zip(photos, names)]
        assert [u.status_code for u in ups] == [201] * 3, [u.text for u in ups]
        ids = [u.json()["id"] for u in ups]
        thumb = client.get(ups[0].json()["thumbnail"])
        assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256
        body = {"prompt": "the mug on the beach", "num_images": 2, "steps": 3, "seed": 11, "guidance": 4.0,
                "guidance_mode": "interleaved", "text_ratio": 0.5,
                "subjects": [{"upload": i, "caption": f"a photo of my mug {k}"} for k, i in enumerate(ids)]}
        r = client.post("/api/jobs", json=body)
        assert r.status_code == 202, r.text
        job = wait_done(client, r.json()["id"])
        assert job["status"] == "done", job
        assert job["step"] == job["total_steps"] == 3 * 2  # the progress hook saw every step of both stages
        got = []
        for i, img in enumerate(job["images"]):
            png = client.get(img["download"])
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert f'filename="suti-{job["id"]}-{i}.png"' in png.headers["content-disposition"]
            im = Image.open(io.BytesIO(png.content))
            assert im.format == "PNG" and im.size == (64, 64)
            meta = read_png_settings(png.content)
            assert meta["prompt"] == "the mug on the beach" and meta["seed"] == 11 and meta["steps"] == 3
            assert meta["subject_texts"] == [f"a photo of my mug {k}" for k in range(3)]
            assert meta["guidance_mode"] == "interleaved" and meta["image_index"] == i and meta["model"] == "tiny"
            assert len(meta["subject_sha256"]) == 3
            got.append(np.asarray(im.convert("RGB")))
        # The page's settings reach the pipeline unchanged: the same call made directly gives the same pixels.
        ref = tiny_suti("the mug on the beach", subject_images=photos,
                        subject_texts=[f"a photo of my mug {k}" for k in range(3)], num_images=2, steps=3,
                        seed=11, guidance=4.0, guidance_mode="interleaved", text_ratio=0.5)
        for a, b in zip(got, ref):
            assert np.array_equal(a, np.asarray(b))
        assert client.get(f"/api/jobs/{job['id']}/images/2.png").status_code == 404
        folder = app.state.uploads.folder
        assert len(list(folder.iterdir())) == 3  # the photos, only in the private temporary folder
    assert not folder.exists()  # removed when the server stops


def test_bad_uploads_get_messages(tiny_suti):
    with serve(tiny_suti, max_upload_bytes=50_000) as (client, app):
        r = upload(client, b"these are my holiday notes, not a photo\n" * 10, "notes.jpg")
        assert r.status_code == 400
        assert "notes.jpg" in r.json()["error"] and "not an image" in r.json()["error"]
        r = upload(client, b"", "empty.png")
        assert r.status_code == 400 and "empty.png" in r.json()["error"] and "empty" in r.json()["error"]
        r = upload(client, render_subject(0)[:600], "cut.jpg")  # a truncated JPEG
        assert r.status_code == 400 and "cut.jpg" in r.json()["error"]
        noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noise).save(buf, format="PNG")  # a real photo, too big
        big = buf.getvalue()
        assert len(big) > 50_000
        r = upload(client, big, "huge.png")  # refused from its Content-Length, before reading it
        assert r.status_code == 413 and "huge.png" in r.json()["error"] and "48.8 KB limit" in r.json()["error"]
        chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))  # no Content-Length: cut off as it streams
        r = client.post("/api/uploads", content=chunks, headers={"X-Filename": "stream.png"})
        assert r.status_code == 413 and "stream.png" in r.json()["error"]
        assert list(app.state.uploads.folder.iterdir()) == []  # nothing of the refused files is left


def test_bad_requests_get_messages(tiny_suti):
    with serve(tiny_suti) as (client, _):
        ids = [upload(client, render_subject(i % 3), f"p{i}.jpg").json()["id"] for i in range(6)]
        subjects = [{"upload": i} for i in ids]

        def error(body, status=400):
            r = client.post("/api/jobs", json=body)
            assert r.status_code == status, r.text
            return r.json()["error"]

        assert "at most 5 subject photos, got 6" in error({"prompt": "a mug", "subjects": subjects})
        assert "write a prompt" in error({"prompt": "   ", "subjects": subjects[:3]})
        assert "write a prompt" in error({"subjects": subjects[:3]})
        assert "steps must be between 1 and 250" in error({"prompt": "a mug", "steps": 0})
        assert "number of images must be between 1 and 8" in error({"prompt": "a mug", "num_images": 100})
        assert "seed must be a whole number" in error({"prompt": "a mug", "seed": "abc"})
        assert "guidance mode must be one of" in error({"prompt": "a mug", "guidance_mode": "loud"})
        assert "same photo is given twice" in error({"prompt": "a mug", "subjects": [subjects[0], subjects[0]]})
        assert "not on the server" in error({"prompt": "a mug", "subjects": [{"upload": "nope"}]})
        r = client.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]
        assert client.get("/api/jobs/unknown").json()["error"].startswith("request 'unknown' is unknown")
        assert "without --database" in client.get("/api/search?q=mug").json()["error"]


def test_two_requests_at_once_are_queued_with_positions(tiny_suti):
    gated = GatedPipe(tiny_suti)
    with serve(gated, max_waiting=2) as (client, app):
        body = {"prompt": "a mug", "steps": 2, "seed": 1}
        a = client.post("/api/jobs", json=body).json()
        assert gated.entered.acquire(timeout=60)  # a is running, held at the gate
        b = client.post("/api/jobs", json={**body, "prompt": "b mug"}).json()
        c = client.post("/api/jobs", json={**body, "prompt": "c mug"}).json()
        assert client.get(f"/api/jobs/{a['id']}").json()["status"] == "running"
        assert (b["status"], b["position"]) == ("queued", 1)
        assert (c["status"], c["position"]) == ("queued", 2)
        full = client.post("/api/jobs", json=body)
        assert full.status_code == 503 and "queue is full" in full.json()["error"]
        assert client.delete(f"/api/jobs/{b['id']}").json()["status"] == "cancelled"
        assert client.get(f"/api/jobs/{c['id']}").json()["position"] == 1  # moved up
        gated.gate.set()
        assert wait_done(client, a["id"])["status"] == "done"
        assert wait_done(client, c["id"])["status"] == "done"
        assert gated.prompts == ["a mug", "c mug"]  # the cancelled request never ran


def test_cancel_running_and_failures_keep_the_server_alive(tiny_suti):
    gated = GatedPipe(tiny_suti, fail_with=RuntimeError("boom"))
    with serve(gated) as (client, app):
        photo = upload(client, render_subject(0), "a.jpg").json()["id"]
        run = client.post("/api/jobs", json={"prompt": "a mug", "steps": 50, "subjects": [{"upload": photo}]}).json()
        assert gated.entered.acquire(timeout=60)
        assert app.state.uploads._uploads[photo].pins == 1  # held for the request
        assert client.delete(f"/api/jobs/{run['id']}").json()["status"] == "running"  # stops at its next step
        gated.gate.set()
        done = wait_done(client, run["id"])
        assert done["status"] == "cancelled" and done["step"] == 0
        assert app.state.uploads._uploads[photo].pins == 0
        failed = wait_done(client, client.post("/api/jobs", json={"prompt": "fail", "steps": 2}).json()["id"])
        assert failed["status"] == "error" and "RuntimeError: boom" in failed["error"]
        ok = wait_done(client, client.post("/api/jobs", json={"prompt": "a mug", "steps": 2}).json()["id"])
        assert ok["status"] == "done" and len(ok["images"]) == 1


def test_an_unexpected_server_error_is_a_message_too(tiny_suti, monkeypatch):
    with serve(tiny_suti, raise_server_exceptions=False) as (client, app):
        monkeypatch.setattr(app.state.queue, "get", lambda job_id: 1 / 0)
        r = client.get("/api/jobs/abc")
        assert r.status_code == 500
        assert r.json()["error"] == "internal server error (ZeroDivisionError); the server log has the details"


def test_text_to_image_checkpoint_refuses_photos(tiny_text_encoder):
    from suti.pipeline import new_pipeline
    from suti.presets import preset

    pipe = new_pipeline(tiny_text_encoder, [preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim)])
    with serve(pipe) as (client, _):
        assert client.get("/api/info").json()["uses_context"] is False
        photo = upload(client, render_subject(0)).json()["id"]
        r = client.post("/api/jobs", json={"prompt": "a mug", "subjects": [{"upload": photo}]})
        assert r.status_code == 400 and "text-to-image only" in r.json()["error"]


def test_upload_store_expiry_and_limits(tmp_path):
    from suti.serve.uploads import UploadError, UploadStore

    store = UploadStore(max_bytes=1_000_000, max_uploads=2, ttl_s=1000)
    try:
        ups = []
        for i in range(2):
            w = store.begin(f"p{i}.jpg")
            w.write(render_subject(i))
            ups.append(w.finish())
        with pytest.raises(UploadError, match="its limit") as e:
            store.begin("p3.jpg")
        assert e.value.status == 503
        store.pin([ups[0].id])
        for up in ups:
            up.last_used -= 2000  # both are old; only the unpinned one may go
        assert store.expire() == 1 and len(store) == 1 and ups[0].path.exists() and not ups[1].path.exists()
        store.remove(ups[0].id)  # removed while pinned: kept until the request is done
        assert ups[0].path.exists()
        store.unpin([ups[0].id])
        assert len(store) == 0 and not ups[0].path.exists()
    finally:
        store.close()
    assert not store.folder.exists()


def test_serve_cli_defaults(monkeypatch, tiny_suti_dir, capsys):
    import uvicorn

    from suti.cli import main
    from suti.serve import settings as serve_settings

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    assert main(["serve", "--model", str(tiny_suti_dir), "--max-upload-mb", "2"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 7860)
    assert seen["app"].state.settings.max_upload_bytes == 2 * 1024 * 1024
    with TestClient(seen["app"], base_url="http://127.0.0.1:7860") as client:
        assert client.get("/api/info").status_code == 200
    with TestClient(seen["app"], base_url="http://rebound.example") as client:  # DNS rebinding: refused
        assert client.get("/api/info").status_code == 400
    monkeypatch.setattr(serve_settings, "DEFAULT_MODEL_FOLDER", tiny_suti_dir.parent / "missing")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "no --model given" in err and "ships no default model" in err and "Traceback" not in err
    monkeypatch.setattr(serve_settings, "DEFAULT_MODEL_FOLDER", tiny_suti_dir)
    assert main(["serve"]) == 0 and seen["app"].state.queue.pipe is not None
    seen["app"].state.queue.close()
    seen["app"].state.uploads.close()


def test_serve_without_the_web_extra_says_how_to_install(monkeypatch, tiny_suti_dir, capsys):
    import sys

    from suti.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the web extra were not installed
    assert main(["serve", "--model", str(tiny_suti_dir)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "suti[web]"' in err and "uvicorn is missing" in err
