"""Test and demo helpers stay out of the core import path.

`suti.tiny` (tiny local text encoders), `dataset_builder.testing` (the planted web corpus and its stand-in
CLIP), `retrieval.testing` and `dataset_builder.faults` (damaged tars and corpora) are public testing
utilities, like `numpy.testing`: tests, examples and benchmarks import them, users may too, and the
library itself never does. The same holds for the optional parts (`suti.demo`, `suti.serve`, the IF
backbone) and their heavy dependencies.
"""
import json
import subprocess
import sys

CORE = ["suti", "suti.pipeline", "suti.cli", "suti.training", "suti.training.trainer", "suti.evaluate",
        "retrieval", "retrieval.database", "retrieval.cli", "dataset_builder", "dataset_builder.build",
        "dataset_builder.cli"]
NOT_CORE = ("suti.tiny", "dataset_builder.testing", "retrieval.testing", "dataset_builder.faults")
OPTIONAL = ("suti.demo", "suti.serve", "suti.if_backbone", "diffusers", "fastapi", "uvicorn", "playwright")


def test_core_modules_do_not_import_test_or_optional_helpers():
    code = ("import importlib, json, sys\n"
            f"for m in {CORE!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if m in NOT_CORE or any(m == o or m.startswith(o + ".") for o in OPTIONAL)]
    assert not bad, f"the core import path loads test/demo/optional modules: {bad}"
