"""The central scheduler as the pipeline runs it: luigi's own luigid, the same flags, which also
saves its state every `[luigid] save_seconds` (10 s), not only when it is stopped cleanly.

    python -m pipeline.luigid [--address 127.0.0.1] [--port 8082] [--logdir DIR] [--state-path FILE]

luigi's luigid writes its state file (`[scheduler] state_path`) only on a clean stop (SIGTERM,
SIGINT): killed (SIGKILL, out of memory, a node lost), it comes back knowing nothing of the run,
and every worker then ends at its next request with its months left undone, exit code 0. Saved
every few seconds (atomically: a kill while saving leaves the last save whole), a luigid started
again knows the run as it was at most that long before: the workers go on, and the tasks they
finished meanwhile they report when it answers again (luigi's RPC retries).
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional

import luigi.configuration
import luigi.scheduler
import luigi.server
import tornado.ioloop
from luigi.setup_logging import DaemonLogging

from pipeline import luigi_internals, settings

logger = logging.getLogger("pipeline.luigid")


def saving(scheduler: luigi.scheduler.Scheduler) -> None:
    """Save the state; a failure is logged and the next save tries again (the scheduler goes on)."""
    try:
        luigi_internals.save_state(scheduler)
    except OSError as e:
        logger.warning("could not save luigid's state (%s); trying again in %s s", e, settings.luigid().save_seconds)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.luigid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", help="the address to listen on (default: every one)")
    parser.add_argument("--port", type=int, default=8082, help="the port to listen on (default: 8082)")
    parser.add_argument("--unix-socket", help="a Unix socket to listen on instead")
    parser.add_argument("--logdir", help="the folder of luigid's log (default: to the console)")
    parser.add_argument("--state-path", help="the state file (default: [scheduler] state_path)")
    opts = parser.parse_args(argv)
    if opts.state_path:
        luigi.configuration.get_config().set("scheduler", "state_path", opts.state_path)
    opts.background = False  # luigi's logging setup asks
    DaemonLogging.setup(opts)
    scheduler = luigi.scheduler.Scheduler()
    tornado.ioloop.PeriodicCallback(lambda: saving(scheduler), settings.luigid().save_seconds * 1000).start()
    luigi.server.run(api_port=opts.port, address=opts.address, unix_socket=opts.unix_socket, scheduler=scheduler)


if __name__ == "__main__":
    main()
