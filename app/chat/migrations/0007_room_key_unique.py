# Written by hand on 2026-11-29. Apart from 0006 because PostgreSQL refuses to
# alter a table in the transaction that changed its rows (its foreign keys'
# checks wait for the commit).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0006_fold_room_names"),
    ]

    operations = [
        migrations.AlterField(
            model_name="room",
            name="key",
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
        migrations.AlterField(
            model_name="room",
            name="name",
            field=models.CharField(help_text="As shown; only its case or width may change.", max_length=64, unique=True),
        ),
        migrations.AlterField(
            model_name="restriction",
            name="room",
            field=models.CharField(
                blank=True, help_text="Mutes only; empty: every room. Any case or width: Lobby is lobby.", max_length=64
            ),
        ),
    ]
