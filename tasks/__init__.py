"""Celery app, queues, job registry, supervisor: the work side of qhybrid."""
