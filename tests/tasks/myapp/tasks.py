"""The tasks that framefox-task-system.txt queues by name, as `myapp.tasks.<name>`."""

from __future__ import annotations

from pgqueue import AsyncTask


@AsyncTask()
async def send_email(to: str, subject: str) -> dict[str, str]:
    return {"status": "sent", "recipient": to, "subject": subject}


@AsyncTask()
async def send_reminder(user_id: int) -> dict[str, object]:
    return {"reminded": user_id}


@AsyncTask()
def generate_report(report_type: str) -> dict[str, str]:
    return {"report": report_type}


@AsyncTask()
async def send_newsletter(campaign_id: str) -> dict[str, str]:
    return {"campaign": campaign_id}


@AsyncTask()
async def send_holiday_greeting(campaign: str) -> dict[str, str]:
    return {"campaign": campaign}
