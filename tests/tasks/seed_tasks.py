"""The tasks of framefox-task-system.txt, imports changed to pgqueue, with stand-ins for the
services the seed leaves undefined (email_service, unreliable_api_call, ...).

Function bodies are the seed's; only the stand-ins above them are ours.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from myapp.tasks import generate_report as generate_report_task  # noqa: F401 - registers myapp
from myapp.tasks import send_reminder  # noqa: F401 - the seed's `send_reminder.delay(...)`

from pgqueue import AsyncTask, current_task

# -- stand-ins ----------------------------------------------------------------------------


class EmailService:
    """Records what it sends; addresses at bounce.invalid fail, as a real service would."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, to: str, subject: str, body: str = "", **extra: Any) -> None:
        await asyncio.sleep(0)
        if to.endswith("@bounce.invalid"):
            raise ConnectionError(f"mailbox {to} does not exist")
        self.sent.append({"to": to, "subject": subject, "body": body, **extra})


email_service = EmailService()


class TemporaryError(Exception):
    pass


async def unreliable_api_call() -> dict[str, Any]:
    """Fails on the first attempt of each task, then answers."""
    if current_task().attempt < 2:
        raise ConnectionError("upstream API unavailable")
    return {"api": "ok", "attempt": current_task().attempt}


_calls: dict[Any, int] = {}


async def external_service() -> dict[str, Any]:
    """Raises TemporaryError on its first call within a run, then answers."""
    key = current_task().id
    _calls[key] = _calls.get(key, 0) + 1
    if _calls[key] == 1:
        raise TemporaryError("try again")
    return {"service": "ok", "calls": _calls[key]}


async def generate_report() -> None:
    await asyncio.sleep(0)


# -- Quick Start --------------------------------------------------------------------------


@AsyncTask(queue="default", priority=0, max_retries=3)
async def send_email(to: str, subject: str, body: str):  # type: ignore[no-untyped-def]
    """Send an email asynchronously"""
    # Email sending logic
    print(f"Sending email to {to}: {subject}")
    await email_service.send(to, subject, body)
    return {"status": "sent", "recipient": to}


@AsyncTask(queue="high_priority", priority=10)
def process_payment(order_id: str, amount: float):  # type: ignore[no-untyped-def]
    """Process payment synchronously"""
    print(f"Processing payment for order {order_id}: ${amount}")
    # Payment processing logic
    return {"status": "completed", "order_id": order_id}


# -- Task Decorator Options -------------------------------------------------------------


@AsyncTask(
    queue="default",  # Queue name
    priority=0,  # Higher = more priority
    max_retries=3,  # Retry attempts on failure
    delay=None,  # Delay in seconds or timedelta
    schedule_at=None,  # Schedule for specific datetime
)
async def all_options_task():  # type: ignore[no-untyped-def]
    return "configured"


# -- Queues and Priorities ----------------------------------------------------------------


# High priority queue
@AsyncTask(queue="urgent", priority=10)
async def process_critical_alert(alert_id: str):  # type: ignore[no-untyped-def]
    # Handle critical alerts immediately
    pass


# Default queue
@AsyncTask(queue="default", priority=5)
async def process_order(order_id: str):  # type: ignore[no-untyped-def]
    # Standard order processing
    pass


# Low priority queue
@AsyncTask(queue="maintenance", priority=1)
async def cleanup_old_data(days: int):  # type: ignore[no-untyped-def]
    # Periodic cleanup tasks
    pass


# Priority 10 - executes first
@AsyncTask(priority=10)
async def urgent_task():  # type: ignore[no-untyped-def]
    pass


# Priority 5 - executes second
@AsyncTask(priority=5)
async def normal_task():  # type: ignore[no-untyped-def]
    pass


# Priority 1 - executes last
@AsyncTask(priority=1)
async def low_priority_task():  # type: ignore[no-untyped-def]
    pass


# -- Task Status and Retry ------------------------------------------------------------------


@AsyncTask(max_retries=5)
async def flaky_task():  # type: ignore[no-untyped-def]
    """This task will retry up to 5 times on failure"""
    # If this raises an exception, it will be retried
    result = await unreliable_api_call()
    return result


@AsyncTask(max_retries=3)
async def task_with_custom_retry():  # type: ignore[no-untyped-def]
    max_attempts = 3

    for attempt in range(max_attempts):
        try:
            result = await external_service()
            return result
        except TemporaryError:
            if attempt == max_attempts - 1:
                raise  # Let task system handle final retry
            await asyncio.sleep(2**attempt)  # Exponential backoff


# -- Recurring Tasks ------------------------------------------------------------------------


@AsyncTask()
async def daily_report():  # type: ignore[no-untyped-def]
    """Generate daily report and reschedule"""
    # Generate report
    await generate_report()

    # Reschedule for tomorrow
    from datetime import datetime, timedelta

    from pgqueue import TaskManager

    task_manager = TaskManager()

    tomorrow = datetime.now() + timedelta(days=1)
    tomorrow = tomorrow.replace(hour=9, minute=0, second=0)

    task_manager.queue_task(task=daily_report, schedule_at=tomorrow)


# -- Complete Example -----------------------------------------------------------------------

logger = logging.getLogger(__name__)


@AsyncTask(queue="emails", max_retries=3)
async def send_welcome_email(user_id: int, email: str):  # type: ignore[no-untyped-def]
    """Send welcome email to new user"""
    try:
        logger.info(f"Sending welcome email to {email}")

        # Send email
        await email_service.send(
            to=email,
            subject="Welcome to Our App!",
            template="welcome",
            context={"user_id": user_id},
        )

        logger.info(f"Welcome email sent to {email}")
        return {"status": "sent", "email": email}

    except Exception as e:
        logger.error(f"Failed to send email: {e}")
        raise
