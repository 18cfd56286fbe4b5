"""Settings of the test project. DJANGO_DATABASE_URL names the PostgreSQL database of both
Django and pg-broker (the test's migrated database); `aux` is an SQLite database, so the
`deferred` backend, whose enqueues follow `aux` transactions, has to use on_commit."""

from __future__ import annotations

import os
import sys

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["DJANGO_DATABASE_URL"])

SECRET_KEY = "test-only"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["tests.django_project.shop"]
if sys.version_info < (3, 12):
    INSTALLED_APPS.append("django_tasks")  # the backport's checks and signal receivers

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db["dbname"],
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    },
    "aux": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}

TASKS = {
    # No DATABASE_URL: pg-broker uses the `default` database, and joins its transactions.
    "default": {
        "BACKEND": "broker.django.Backend",
        "QUEUES": ["default", "emails", "parked"],
    },
    "retrying": {
        "BACKEND": "broker.django.Backend",
        "OPTIONS": {"MAX_ATTEMPTS": 2},
    },
    "deferred": {
        "BACKEND": "broker.django.Backend",
        "QUEUES": [],  # any queue
        "OPTIONS": {"DATABASE": "aux", "DATABASE_URL": os.environ["DJANGO_DATABASE_URL"]},
    },
}
