from django.db import models


class Order(models.Model):
    customer_id = models.CharField(max_length=128)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    # Set once the order_paid event is on the queue; NULL means "not reported yet" (e.g. Redis
    # was down with the spool off): a reconciliation job can find and re-send those.
    event_id = models.CharField(max_length=128, null=True)

    class Meta:
        app_label = "django_app"
