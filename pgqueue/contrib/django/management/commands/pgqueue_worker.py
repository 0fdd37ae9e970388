"""`python manage.py pgqueue_worker --queues default,emails`: a pgqueue worker that runs the
Django tasks of the installed apps' `tasks` modules (and of --import modules)."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import autodiscover_modules

from pgqueue.contrib.django.api import task_backends
from pgqueue.contrib.django.backend import PgQueueBackend
from pgqueue.errors import PgQueueError
from pgqueue.tasks import registry
from pgqueue.worker import WorkerManager


class Command(BaseCommand):
    help = (
        "Run a pgqueue worker for this project's Django tasks: those of each installed app's "
        "tasks module, and of the modules given with --import."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues", help="comma-separated queues (default: the backend's QUEUES)"
        )
        parser.add_argument("--concurrency", type=int, default=10, help="tasks run at once")
        parser.add_argument(
            "--interval", type=float, default=5.0, help="polling safety net, in seconds"
        )
        parser.add_argument("--backend", default="default", help="the alias in TASKS")
        parser.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            help="a module defining tasks (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        backend = self._backend(options["backend"])
        autodiscover_modules("tasks")
        for module in options["imports"]:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise CommandError(f"cannot import task module {module!r}: {error}") from None
        queues = (
            [queue.strip() for queue in options["queues"].split(",") if queue.strip()]
            if options["queues"]
            else sorted(backend.queues)
        )
        if not queues:
            raise CommandError("--queues names no queue; give one or more, comma-separated")
        if options["concurrency"] < 1:
            raise CommandError(f"--concurrency must be at least 1, not {options['concurrency']}")
        worker = WorkerManager(settings=backend.settings)
        worker.set_queues(queues)
        worker.set_concurrent_tasks(options["concurrency"])
        worker.set_polling_interval(options["interval"])
        self.stdout.write(
            f"pgqueue worker: queues {', '.join(queues)}; "
            f"{len(registry.registered_names())} tasks registered"
        )
        try:
            asyncio.run(worker.start())
        except PgQueueError as error:
            raise CommandError(str(error).partition("\n")[0]) from None

    def _backend(self, alias: str) -> PgQueueBackend:
        try:
            backend = task_backends[alias]
        except Exception as error:
            raise CommandError(f"no task backend {alias!r} in TASKS: {error}") from None
        if not isinstance(backend, PgQueueBackend):
            raise CommandError(
                f"TASKS[{alias!r}] uses {type(backend).__name__}, not "
                "pgqueue.contrib.django.PgQueueBackend"
            )
        return backend
