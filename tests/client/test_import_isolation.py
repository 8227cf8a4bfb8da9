"""A pipeline imports the client without the server's dependencies: in a fresh interpreter where
fastapi, sqlalchemy, celery, torch, numpy, pydantic and specprune's own server packages cannot be
imported, it submits, follows, cancels, downloads and reads a report from a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import FinishedJob
from tests.client.servers import Served

BLOCKED = (
    "fastapi", "starlette", "sqlalchemy", "alembic", "celery", "kombu", "redis", "boto3", "pydantic",
    "pydantic_settings", "uvicorn", "torch", "numpy", "core", "app", "worker",
)  # fmt: skip

SCRIPT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these now raises ImportError

from client import Client, JobCancelled, NotFound, verify_webhook

url, finished, model, data, out = sys.argv[1:6]
client = Client(url)
job = client.job(finished).wait(progress=True)
path = job.download(out)
report = job.report()
queued = client.submit(model, dataset=data, config={{"flops_ratio": 0.5}})
queued.cancel()
try:
    queued.wait(progress=False, timeout=60)
except JobCancelled:
    pass
queued.delete()
try:
    client.job(queued.id)
    missing = False
except NotFound:
    missing = True
loaded = sorted(name for name in {blocked!r} if sys.modules.get(name) is not None)
print(json.dumps({{"path": str(path), "layers": len(report["layers"]), "missing": missing, "loaded": loaded}}))
"""


def test_the_client_works_without_the_server_dependencies(
    served: Served, finished_job: FinishedJob, model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = model_and_data
    out = tmp_path / "model.pt2"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT.format(blocked=BLOCKED),
            served.url,
            finished_job.job.id,
            model,
            data,
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == {"path": str(out), "layers": summary["layers"], "missing": True, "loaded": []}
    assert summary["layers"] >= 1 and out.stat().st_size > 0
    assert "succeeded" in result.stderr  # progress=True printed plain lines (stderr is not a terminal)
