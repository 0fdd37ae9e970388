"""The shop's Django tasks (found by `manage.py pgqueue_worker` as an app's tasks module)."""

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

from shop.models import Order


@task(queue_name="emails", priority=10)
def send_receipt(order_id: int) -> str:
    order = Order.objects.get(id=order_id)
    return f"receipt for order {order.id}: {order.total}"


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def async_double(x: int) -> int:
    return 2 * x


@task(takes_context=True)
def which_attempt(context, label: str) -> dict:
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task
def explode() -> None:
    raise ValueError("the shop is closed")
