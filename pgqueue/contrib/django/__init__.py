"""pgqueue as a Django tasks backend (docs/django.md).

    INSTALLED_APPS = [..., "pgqueue.contrib.django"]
    TASKS = {"default": {"BACKEND": "pgqueue.contrib.django.PgQueueBackend",
                         "QUEUES": ["default", "emails"]}}

Works with Django 6's `django.tasks` and with the `django-tasks` backport (`pgqueue-tasks[django]`).
"""

from pgqueue.contrib.django.backend import PgQueueBackend

__all__ = ["PgQueueBackend"]
