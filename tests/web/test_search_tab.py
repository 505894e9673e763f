"""The pairs-database tab of suti serve: text -> nearest pairs, and a pair taken as a subject photo."""
import io

import pytest
from PIL import Image
from web_helpers import wait_done

pytest.importorskip("fastapi", reason="suti serve needs the web extra: pip install -e '.[web]'")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from suti.serve import ServeSettings  # noqa: E402
from suti.serve.app import create_app  # noqa: E402

def test_search_and_use_a_pair(tiny_suti, pairs_db_folder):
    from retrieval import PairsDatabase

    db = PairsDatabase.open(pairs_db_folder)
    with TestClient(create_app(tiny_suti, ServeSettings(), database=db)) as client:
        assert client.get("/api/info").json()["database"] == {"records": 3}
        r = client.get("/api/search", params={"q": "a red mug", "k": 2})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert len(hits) == 2 and hits[0]["score"] >= hits[1]["score"]
        assert {h["key"] for h in hits} <= {"red", "green", "blue"} and all(h["caption"] for h in hits)
        expect = db.search_text("a red mug", k=2)
        assert [h["key"] for h in hits] == [e["key"] for e in expect]
        thumb = client.get(hits[0]["thumbnail"])
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"
        assert "write some text" in client.get("/api/search", params={"q": " "}).json()["error"]
        assert "k must be between" in client.get("/api/search", params={"q": "mug", "k": 0}).json()["error"]
        assert "out of range" in client.get("/api/pairs/99/thumbnail.jpg").json()["error"]

        up = client.post(f"/api/uploads/from-pair/{hits[0]['id']}")
        assert up.status_code == 201 and up.json()["caption"] == hits[0]["caption"]
        job = client.post("/api/jobs", json={"prompt": "the mug on the beach", "steps": 2, "seed": 0,
                                             "subjects": [{"upload": up.json()["id"], "caption": up.json()["caption"]}]})
        assert job.status_code == 202, job.text
        done = wait_done(client, job.json()["id"])
        assert done["status"] == "done" and done["settings"]["subject_texts"] == [hits[0]["caption"]]


def test_serve_cli_opens_the_database(monkeypatch, tiny_suti_dir, pairs_db_folder):
    import uvicorn

    from suti.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app))
    assert main(["serve", "--model", str(tiny_suti_dir), "--database", str(pairs_db_folder), "--port", "0"]) == 0
    with TestClient(seen["app"], base_url="http://127.0.0.1:7860") as client:
        assert client.get("/api/info").json()["database"] == {"records": 3}
        assert len(client.get("/api/search", params={"q": "a blue mug", "k": 3}).json()["results"]) == 3
    assert main(["serve", "--model", str(tiny_suti_dir), "--database", str(pairs_db_folder / "nope")]) == 2
