"""Just enough settings for the example: one app, SQLite, no admin, no sessions."""

import os
import tempfile

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
INSTALLED_APPS = ["django_app"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "django_app.views"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "DJANGO_APP_DB", os.path.join(tempfile.gettempdir(), "django_app.sqlite3")
        ),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_app": {"handlers": ["console"], "level": "INFO"}},
}
