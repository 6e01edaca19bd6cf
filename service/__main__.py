"""Run the service: ``python -m service --host 127.0.0.1 --port 8000 --model-dir model``.

Flags override the TRANSERVE_* environment settings. uvicorn handles SIGTERM: it stops
accepting connections, lets in-flight requests finish, runs the lifespan shutdown (which
drains the batcher) and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import uvicorn
from pydantic import ValidationError

from service.http import protocol_class
from service.settings import Settings


class DrainingServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM (or Ctrl-C) it also tells the scheduler to finish what it
    accepted within `shutdown_timeout_s` and answer the rest 503, so that the process exits
    within its grace period whatever the load."""

    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self.service_app = app

    def handle_exit(self, sig: int, frame) -> None:
        state = getattr(self.service_app.state, "service", None)
        if state is not None and state.scheduler is not None and not self.should_exit:
            state.scheduler.drain(state.settings.shutdown_timeout_s)
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service", description="transerve HTTP service")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model-dir")
    p.add_argument("--provider", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"invalid settings: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # the scheduler answers what it could not finish by shutdown_timeout_s; 5 s more to send it
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 5,
        access_log=False,
        # Idle keep-alive connections outlive the clients' pool expiry (a client then never sends
        # on a connection the server is just closing: a reset instead of an answer), and a burst
        # of connections waits in the kernel's queue instead of being refused.
        # uvicorn's httptools protocol plus a bound on the request head (431), a deadline for it
        # (408) and a bound on connections per client address (429): service/http.py
        http=protocol_class(settings),
        timeout_keep_alive=settings.keep_alive_s,
        backlog=settings.backlog,
        # X-Forwarded-For only from the proxies named in the settings (uvicorn trusts 127.0.0.1
        # by default, so any local client could pick its own address and dodge the rate limit)
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or "",
    )
    server = DrainingServer(config, app)
    # uvicorn drains on SIGTERM, then re-raises the signal to whatever handler was installed
    # before it ran. A no-op handler here turns a graceful SIGTERM shutdown into exit 0, which
    # is what process supervisors (Kubernetes, docker stop) treat as a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    # uvicorn returns after a lifespan startup failure (e.g. no model directory) without raising
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
