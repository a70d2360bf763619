"""`kinfer-runtime` / `python -m kinfer_runtime`: serve one model until SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from kinfer_runtime import logs, settings


def main(argv: Sequence[str] | None = None) -> int:
    cfg = settings.parse(argv)
    logs.configure(cfg.log_level)
    from kinfer_runtime.server import serve  # after logging is set up

    if cfg.event_loop == "uvloop":
        import uvloop

        return uvloop.run(serve(cfg))
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
