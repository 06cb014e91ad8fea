"""A minimal Django project that reports ``order_paid`` only after the order's transaction commits.

``transaction.on_commit`` runs the enqueue after COMMIT, so an order that is rolled back (here:
a declined card) sends no event. Run it with (from the repository root)::

    export REDIS_URL=redis://localhost:6379/0 DJANGO_APP_DB=/tmp/orders.sqlite3
    python ops/examples/django_app/manage.py migrate --run-syncdb
    python ops/examples/django_app/manage.py runserver
    curl -X POST localhost:8000/orders/ -H 'content-type: application/json' \\
         -d '{"customer_id": "user-42", "total": "49.90"}'
"""
