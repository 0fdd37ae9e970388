"""`pgqueue config show`: the effective settings and where each comes from."""

from __future__ import annotations

import json
import os

import click

from pgqueue.dsn import mask_dsn
from pgqueue.settings import Settings, config_path, get_settings, read_config_file


def mask(value: object) -> object:
    """Hide passwords: in DSNs and URLs (every form), and the values of password keys."""
    if isinstance(value, str):
        return mask_dsn(value)
    if isinstance(value, dict):
        return {key: "****" if "password" in key else mask(item) for key, item in value.items()}
    return value


def sources(settings: Settings) -> dict[str, str]:
    """Each setting's source: environment variable, config file, or default."""
    path = config_path()
    from_file = read_config_file(path) if path else {}
    found = {}
    for name in Settings.field_names():
        env_name = f"PGQUEUE_{name.upper()}"
        if env_name in os.environ or any(key.startswith(env_name + "__") for key in os.environ):
            found[name] = f"env {env_name}"
        elif name in from_file:
            found[name] = f"file {path}"
        else:
            found[name] = "default"
    return found


@click.group()
def config() -> None:
    """Inspect pgqueue's settings."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(as_json: bool) -> None:
    """Print the effective settings with their source; passwords masked."""
    settings = get_settings()
    values = mask(settings.to_dict())
    assert isinstance(values, dict)
    origin = sources(settings)
    if as_json:
        click.echo(json.dumps({k: {"value": v, "source": origin[k]} for k, v in values.items()}))
        return
    width = max(len(name) for name in values)
    for name, value in values.items():
        shown = "(embedded server)" if name == "dsn" and value is None else json.dumps(value)
        click.echo(f"{name:<{width}}  {shown}  [{origin[name]}]")
