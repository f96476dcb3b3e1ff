"""``iogate run FILE --job``: a batch file as a durable job, followed with a
progress bar; interrupted, the next run picks the same job up (embedded
default: the command's own process runs the chunks)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

IOGATE = [sys.executable, "-m", "iogate.cli"]


def setup(tmp_path: Path, count: int, slow: bool) -> tuple[Path, Path]:
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)")
    config = tmp_path / "iogate.toml"
    config.write_text(
        f'[jobs]\nstore = "sqlite:///{tmp_path / "jobs.db"}"\nchunk_size = 10\n'
        f'worker_chunks = 1\n\n[databases.lite]\ntype = "sqlite"\npath = "{tmp_path / "t.db"}"\n'
    )
    ops: list[dict[str, Any]] = []
    for i in range(count):
        ops.append(
            {
                "type": "database",
                "db_name": "lite",
                "query": "INSERT INTO items (v) VALUES (?)",
                "params": [i],
            }
        )
        if slow:
            ops.append(
                {
                    "type": "database",
                    "db_name": "lite",
                    "query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < 100000) SELECT count(*) AS n FROM c",
                }
            )
    batch = tmp_path / "batch.json"
    batch.write_bytes(orjson.dumps({"operations": ops, "concurrency": 1}))
    return config, batch


def test_run_job_writes_every_result(tmp_path: Path) -> None:
    config, batch = setup(tmp_path, 120, slow=False)
    out = tmp_path / "out.json"
    done = subprocess.run(
        [*IOGATE, "run", str(batch), "--job", "--config", str(config), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted job" in done.stdout
    results = orjson.loads(out.read_bytes())
    assert len(results) == 120
    assert all(r["success"] for r in results)
    assert not (tmp_path / "batch.json.iogate-job").exists()


def test_an_interrupted_run_follows_the_same_job_again(tmp_path: Path) -> None:
    config, batch = setup(tmp_path, 60, slow=True)
    command = [*IOGATE, "run", str(batch), "--job", "--config", str(config)]
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    state = tmp_path / "batch.json.iogate-job"
    deadline = time.monotonic() + 60
    while True:  # until some results are stored
        if state.exists() and (tmp_path / "jobs.db").exists():
            with sqlite3.connect(tmp_path / "t.db") as db:
                (rows,) = db.execute("SELECT count(*) FROM items").fetchone()
            if rows >= 5:
                break
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)  # polling another process
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 130, output
    assert "picks the display up again" in output
    job_id = state.read_text().strip()

    second = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert f"resuming the display of job {job_id}" in second.stdout, second.stdout
    assert "submitted job" not in second.stdout
    with sqlite3.connect(tmp_path / "t.db") as db:
        (rows,) = db.execute("SELECT count(*) FROM items").fetchone()
    assert rows == 60  # every insert applied, none twice (v is unique)
    # Exit 0, or 1 when an insert in flight at the interruption ran again.
    assert second.returncode in (0, 1), second.stdout + second.stderr
    assert not state.exists()
