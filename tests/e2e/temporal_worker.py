"""A Temporal worker as a process of its own, for the crash test (which kills it with -9).

``python tests/e2e/temporal_worker.py ADDRESS TASK_QUEUE DSN AGENT_URL``: the workflow and
the step activities on TASK_QUEUE, mirroring into PostgreSQL at DSN, agent-manager at
AGENT_URL. Prints ``ready`` once it polls.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.service.transport import make_client
from engine.storage.db import create_pool
from engine.storage.executions import PostgresStore
from engine.temporal.runner import TemporalRunner, connect
from steps.base import Settings

HEARTBEAT_TIMEOUT = 2.0


async def main(address: str, task_queue: str, dsn: str, agent_url: str) -> None:
    pool = await create_pool(dsn, max_size=5)
    store = PostgresStore(pool, "temporal-worker", 15.0)
    store.writer.start()
    client = await connect(address)
    settings = Settings(agent_manager_url=agent_url, dry_run=False, live=True)
    async with make_client() as http, TemporalRunner(
            client, store, settings, task_queue=task_queue, heartbeat_timeout=HEARTBEAT_TIMEOUT, http=http,
            worker_options={"sticky_queue_schedule_to_start_timeout": timedelta(seconds=1)}):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(levelname)s %(message)s")
    asyncio.run(main(*sys.argv[1:5]))
