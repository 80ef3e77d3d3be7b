"""Running the repo's own scripts from a benchmark, each command and its output appended to a log."""
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh(command, log):
    """Run `command` from the repo root, its output appended to `log`; returns its seconds."""
    started = time.time()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(map(str, command)) + "\n")
        handle.flush()
        subprocess.run([str(c) for c in command], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, check=True)
    return time.time() - started
