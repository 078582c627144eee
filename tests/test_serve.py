"""``sheetbridge serve`` as a user starts it: demo data, workers in a child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.server import free_port


def test_serve_starts_the_demo_and_its_worker_process_runs_syncs(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SHEETBRIDGE_DATA_DIR": str(tmp_path / "data"),
        "SHEETBRIDGE_PORT": str(port),
        "SHEETBRIDGE_LOG_LEVEL": "WARNING",
    }
    env.pop("SHEETBRIDGE_TEST_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "sheetbridge", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        printed = [server.stdout.readline() for _ in range(6)]
        assert f"http://127.0.0.1:{port}/" in printed[0]
        assert any("alice / alice-demo" in line for line in printed)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=10) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
            login = client.get("/login")
            csrf = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            client.post(
                "/login",
                data={"username": "alice", "password": "alice-demo", "csrf": csrf},
            )
            page = client.get("/")
            token = page.text.split('name="csrf-token" content="', 1)[1].split('"')[0]
            queued = client.post(
                "/api/insurance/sync/to-sheet", headers={"X-CSRF-Token": token}
            )
            assert queued.status_code == 202
            url = queued.json()["status_url"]
            while (job := client.get(url).json())["state"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
        assert job["state"] == "succeeded", job
        assert (tmp_path / "data" / "workbooks" / "alice.xlsx").exists()
    finally:
        server.terminate()
        server.wait(60)
