"""Settings, Celery configuration and the beat schedule: everything an operator tunes."""
