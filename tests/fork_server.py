"""A fork server for the kill tests: imports genlab, torch and Lightning once, then forks one child per
`genlab` command, so a test can SIGKILL dozens of real `genlab train` processes without paying the
~5 s import for each (the CLI's `main` runs in the child exactly as in a new interpreter).

Protocol, one JSON object per line on stdin, one answer per line on stdout:
    {"run": [ARGS...], "stderr": PATH}  ->  {"pid": PID}       fork a child running `genlab ARGS...`
    {"poll": PID}                       ->  {"status": S}      S: null while it runs, else as below
    {"wait": PID}                       ->  {"status": S}      S: exit code, or -SIGNAL if killed
Only this process can reap its children, hence poll and wait.

Run as `python tests/fork_server.py`; it exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys

import torch.utils.tensorboard  # noqa: F401  (Lightning's TensorBoard logger imports it on first use: 1 s)

# Everything `genlab train` imports, before the first fork; nothing here starts a thread.
import genlab.cli
import genlab.engine.trainer  # noqa: F401  (torch, Lightning, every genlab module the trainer uses)


def _status(raw: int) -> int:
    """An exit code, or minus the signal that killed the child (as subprocess reports it)."""
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def _child(args: list[str], stderr: str) -> None:
    """Run `genlab ARGS` with stdout discarded and stderr to a file; never returns."""
    try:
        err = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        sys.stdin = open(os.devnull)  # the server's stdin is the test's pipe: leave it alone
        try:
            code = genlab.cli.main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # anything else is a crash: report it as the interpreter would
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        code = 1
    os._exit(code or 0)


def serve() -> None:
    """Answer requests until stdin closes."""
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "run" in request:
            pid = os.fork()
            if pid == 0:
                _child(request["run"], request["stderr"])
            answer = {"pid": pid}
        elif "poll" in request:
            pid, raw = os.waitpid(request["poll"], os.WNOHANG)
            answer = {"status": None if pid == 0 else _status(raw)}
        else:
            answer = {"status": _status(os.waitpid(request["wait"], 0)[1])}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
