"""`genlab serve [RUNS_DIR or RUN ...] [--host 127.0.0.1] [--port 8765]`: a local web playground for run folders.

Needs the `serve` extra (FastAPI and uvicorn); without it, one line says how to install it. Binds to
loopback unless told otherwise, and warns then: the page runs models on this machine for whoever reaches it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import sys

from genlab.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def add_parser(subparsers) -> None:
    """Add the `serve` command."""
    p = subparsers.add_parser(
        "serve", help="a local web playground: sample, compare and watch every run (extra: serve)",
        description="Serve a web page listing the runs found in the given folders (run folders, or folders of "
                    "runs and `genlab compare` reports): sample with each family's options, watch diffusion "
                    "previews, build compare grids, follow training curves. Needs pip install 'genlab[serve]'.",
        epilog="example: genlab serve runs/ --port 8765")
    p.add_argument("paths", nargs="*", default=["runs"], metavar="RUNS_DIR_OR_RUN",
                   help="run folders or folders holding runs (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    """Start the server and serve until interrupted."""
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"genlab serve needs {' and '.join(missing)}; install the extra: pip install 'genlab[serve]' "
                          f"(or pip install fastapi uvicorn)")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a port; give 1..65535 (default 8765)")
    # lazy: FastAPI, uvicorn and the engine (torch) load in seconds; `genlab --help` must not wait for them
    import uvicorn

    from genlab.serve.app import LOOPBACK_HOSTS, create_app

    local = is_loopback(args.host)
    app = create_app(args.paths, allowed_hosts=LOOPBACK_HOSTS if local else None)
    if not local:
        print(f"warning: serving on {args.host}, not loopback: anyone who reaches this address can run the "
              f"models of these runs on this machine; use --host 127.0.0.1 to keep it local", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"genlab serve: http://{shown}:{args.port}/ ({len(app.state.roots.runs())} runs; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
