"""A task's place in its workflow, drawn on the server as inline SVG (no JavaScript): its
parents on the left, the task in the middle, its children on the right, each a link to its
own page, coloured by status.

>>> svg = workflow_svg(task, admin.relatives(task.id), url)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from markupsafe import Markup, escape

from pgqueue.records import Task

NODE_W, NODE_H, ROW_H = 230, 36, 46
COLUMN_GAP = 90
TOP = 8
#: Characters of a name shown in a node (the full name is its tooltip).
NAME_CHARS = 26

Link = Callable[..., str]


def workflow_svg(task: Task, relatives: dict[str, Any], url: Link) -> Markup:
    """The graph of `task` with `relatives` (Admin.relatives: the first parents and children
    and their counts); empty for a task outside any workflow."""
    parents, children = relatives["parents"], relatives["children"]
    if not parents and not children:
        return Markup("")
    more_parents = relatives["parent_count"] - len(parents)
    more_children = relatives["child_count"] - len(children)
    rows = max(len(parents) + (more_parents > 0), len(children) + (more_children > 0), 1)
    height = TOP * 2 + rows * ROW_H
    width = 3 * NODE_W + 2 * COLUMN_GAP
    middle_y = TOP + (rows * ROW_H - NODE_H) / 2
    columns = (0, NODE_W + COLUMN_GAP, 2 * (NODE_W + COLUMN_GAP))
    parts = [
        f'<svg class="workflow-graph" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_label(relatives)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    # Edges first, so the nodes are drawn over their ends.
    for index in range(len(parents)):
        parts.append(_edge(columns[0] + NODE_W, _row_y(index), columns[1], middle_y))
    for index in range(len(children)):
        parts.append(_edge(columns[1] + NODE_W, middle_y, columns[2], _row_y(index)))
    for index, parent in enumerate(parents):
        parts.append(_node(columns[0], _row_y(index), parent, url, "parent"))
    if more_parents > 0:
        parts.append(_more(columns[0], _row_y(len(parents)), more_parents, "parents"))
    current = {"id": task.id, "name": task.name, "status": task.status.value}
    parts.append(_node(columns[1], middle_y, current, url, "current"))
    for index, child in enumerate(children):
        parts.append(_node(columns[2], _row_y(index), child, url, "child"))
    if more_children > 0:
        parts.append(_more(columns[2], _row_y(len(children)), more_children, "children"))
    parts.append("</svg>")
    return Markup("".join(parts))


def _label(relatives: dict[str, Any]) -> str:
    parents, children = relatives["parent_count"], relatives["child_count"]
    return str(
        escape(
            f"workflow: {parents} parent{'s' * (parents != 1)}, "
            f"{children} child{'ren' * (children != 1)}"
        )
    )


def _row_y(index: int) -> float:
    return TOP + index * ROW_H


def _edge(x1: float, y1: float, x2: float, y2: float) -> str:
    a, b = y1 + NODE_H / 2, y2 + NODE_H / 2
    bend = (x2 - x1) / 2
    return (
        f'<path class="edge" d="M{x1:.0f},{a:.0f} C{x1 + bend:.0f},{a:.0f} '
        f'{x2 - bend:.0f},{b:.0f} {x2:.0f},{b:.0f}"/>'
    )


def _node(x: float, y: float, member: dict[str, Any], url: Link, role: str) -> str:
    """One task: a box coloured by status with its short id (the last 8 hex digits, as the
    command line shows it: a UUIDv7 begins with its time), name and status; a link to its
    page, but for the task shown (and one cleaned up since, whose name is gone)."""
    task_id = str(member["id"])
    name, status = member["name"], member["status"]
    if name is None:  # its row was removed (cleanup): the edge outlived it
        name, status = "(cleaned up)", "gone"
    shown = name if len(name) <= NAME_CHARS else "…" + name[-(NAME_CHARS - 1) :]
    box = (
        f'<g class="node node-{role} status-{escape(status.lower())}" '
        f'data-task="{escape(task_id)}">'
        f"<title>{escape(task_id)} {escape(name)} ({escape(status)})</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="4"/>'
        f'<text x="{x + 8:.0f}" y="{y + 15:.0f}" class="name">'
        f'<tspan class="mono">{escape(task_id[-8:])}</tspan> {escape(shown)}</text>'
        f'<text x="{x + 8:.0f}" y="{y + 30:.0f}" class="state">{escape(status)}</text>'
        "</g>"
    )
    if role == "current" or member["name"] is None:
        return box
    return f'<a href="{escape(url("/tasks/" + task_id))}">{box}</a>'


def _more(x: float, y: float, count: int, side: str) -> str:
    return (
        f'<text x="{x + 8:.0f}" y="{y + 22:.0f}" class="more">and {count:,} more {side} '
        "(pgqueue tasks show)</text>"
    )
