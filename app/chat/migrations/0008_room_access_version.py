from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0007_room_key_unique"),
    ]

    operations = [
        migrations.AddField(
            model_name="room",
            name="access_version",
            field=models.PositiveBigIntegerField(db_default=0, default=0, editable=False),
        ),
    ]
