from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []

    operations: ClassVar[list[migrations.CreateModel]] = [
        migrations.CreateModel(
            name="Customer",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False)),
                    ("name", models.CharField(max_length=100))],
        ),
        migrations.CreateModel(
            name="Product",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False)),
                    ("name", models.CharField(max_length=100)),
                    ("stock", models.IntegerField()),
                    ("sold", models.IntegerField(default=0))],
        ),
        migrations.CreateModel(
            name="Order",
            fields=[("id", models.BigAutoField(primary_key=True, serialize=False)),
                    ("quantity", models.IntegerField(default=1)),
                    ("created_at", models.DateTimeField(auto_now_add=True)),
                    ("customer", models.ForeignKey(null=True, on_delete=models.deletion.SET_NULL,
                                                   to="shop.customer")),
                    ("product", models.ForeignKey(on_delete=models.deletion.CASCADE, to="shop.product"))],
        ),
    ]
