"""What the input checks cost a point query, counted in instructions.

The checks of docs/security.md ("Limits": read deadlines, the Host check,
JSON depth and string size, parameter count, the result byte cap) are
turned off in a scratch worktree of the same commit (``bench/checks_off.patch``)
and both trees' ``iogate serve`` run under callgrind (``bench/instructions.py``,
interleaved rounds). The ratio is the point query's loss to the checks.

    python bench/checks_cost.py [--quick]

Needs git, valgrind (``apt-get install valgrind``) and a clean working tree
(the "after" side is this checkout's ``src``; the "before" side is HEAD with
the patch). Skipped, with a line saying why, when one is missing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATCH = ROOT / "bench" / "checks_off.patch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 requests, one round")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("skipped: needs valgrind (apt-get install valgrind)")
        return
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if dirty:
        print("skipped: src/ has uncommitted changes (the baseline is HEAD with the patch)")
        return
    scratch = Path(tempfile.mkdtemp(prefix="iogate-checks-off-"))
    tree = scratch / "tree"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), "HEAD"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        applied = subprocess.run(
            ["git", "apply", str(PATCH)], cwd=tree, capture_output=True, text=True
        )
        if applied.returncode != 0:
            print(f"skipped: bench/checks_off.patch no longer applies: {applied.stderr.strip()}")
            return
        requests, rounds = ("300", "1") if args.quick else ("1500", "2")
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "instructions.py"),
                "--baseline-src",
                str(tree / "src"),
                "--after-src",
                str(ROOT / "src"),
                "--requests",
                requests,
                "--rounds",
                rounds,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=7200,
        )
        print("Instructions per point query, without the checks (before) and with (after):\n")
        print("```")
        print(done.stdout.strip() or done.stderr.strip()[-2000:])
        print("```")
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True
        )
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
