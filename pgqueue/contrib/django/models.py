"""No models: pgqueue's tables are its own (`pgqueue migrate`, or `manage.py migrate`,
which runs the same upgrade after Django's migrations; see apps.py)."""
