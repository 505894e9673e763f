import pytest

from dataset_builder.testing import make_planted_records, write_img2dataset_shards

@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A planted web corpus as 3 img2dataset shards, and the answers it was built with."""
    root = tmp_path_factory.mktemp("planted")
    rows, expected = make_planted_records()
    shards = write_img2dataset_shards(rows, root / "shards", n_shards=3)
    return {"rows": rows, "expected": expected, "shards": [str(s) for s in shards]}
