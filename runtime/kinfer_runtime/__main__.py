"""`kinfer-runtime` / `python -m kinfer_runtime`: serve one model until SIGTERM;
`kinfer-runtime fetch URI DIR` downloads one (storage/fetch.py); `kinfer-runtime triton-repo MODEL_DIR
REPO` lays out a Triton model repository (triton_repo.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from kinfer_runtime import logs, settings


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["fetch"]:  # the storage initializer (init container)
        from kinfer_runtime.storage.fetch import main as fetch

        return fetch(args[1:])
    if args[:1] == ["triton-repo"]:  # init container of runtime.server: triton pods
        from kinfer_runtime.triton_repo import main as triton_repo

        return triton_repo(args[1:])
    if args[:1] in (["push"], ["ls"]):  # behind `kinfer model push|ls`
        from kinfer_runtime.storage.push import main as storage_command

        return storage_command(args[0], args[1:])
    cfg = settings.parse(args)
    logs.configure(cfg.log_level)
    from kinfer_runtime.server import serve  # after logging is set up

    if cfg.event_loop == "uvloop":
        import uvloop

        return uvloop.run(serve(cfg))
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
