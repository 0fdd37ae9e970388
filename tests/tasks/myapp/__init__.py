"""The seed's `myapp` package: tasks the seed queues by name ("myapp.tasks.send_email")."""
