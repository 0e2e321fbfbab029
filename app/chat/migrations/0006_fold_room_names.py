# Written by hand on 2026-11-29: a key for every room, and rooms whose names
# differ only by case or width (Lobby, lobby, ｌｏｂｂｙ) merged into one.

from collections import defaultdict

from django.db import migrations, models
from django.db.models import Count, Max, Min

BATCH = 1000


def fold_room_names(apps, schema_editor):
    """Keys every room (protocol.room_key) and merges the rooms that share a key.

    Messages and mutes go by the room's key from now on, so each message's
    `room` becomes its room's key. Rooms that share one become one row,
    shown as the spelling of its first message (the first used):
    - their messages, in their original id order, are renumbered 1, 2, 3, ...
      (seq) in that order, and last_seq is the last of them;
    - of messages one sender posted with one client_id in two of them, the
      latest keeps it (the id only stops a resend from being stored twice);
    - the room is private if any of them was: a private room's history is
      never shown to people it was not shown to before. Its creator is the
      oldest private one's creator (else the oldest room's); its members are
      all of theirs, and the merged rooms' other creators.
    Messages from before rooms had rows (0002) get one. Mutes name the room
    by its key too; the moderation log stays as written. Running it again
    changes nothing.
    """
    from chat import protocol

    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    Restriction = apps.get_model("chat", "Restriction")

    rows, spellings = defaultdict(list), defaultdict(set)
    for room in Room.objects.order_by("pk"):
        rows[protocol.room_key(room.name)].append(room)
    for name in Message.objects.order_by().values_list("room", flat=True).distinct():
        spellings[protocol.room_key(name)].add(name)
    for key in rows.keys() | spellings.keys():
        if len(rows[key]) <= 1 and len(spellings[key]) <= 1:
            keep_alone(Room, Message, key, rows[key], spellings[key])
        else:
            merge(Room, Message, key, rows[key], spellings[key])

    for name in Restriction.objects.exclude(room="").order_by().values_list("room", flat=True).distinct():
        Restriction.objects.filter(room=name).update(room=protocol.room_key(name))


def keep_alone(Room, Message, key, rows, spellings):
    """A room no other spelling shares: its messages take its key, their numbers stay."""
    name = next(iter(spellings), None)
    if rows:
        room = rows[0]
    else:
        last_seq = Message.objects.filter(room=name).aggregate(last=Max("seq"))["last"] or 0
        room = Room.objects.create(name=name, last_seq=last_seq)
    if name is not None and name != key:
        Message.objects.filter(room=name).update(room=key)
    room.key = key
    room.save(update_fields=["key"])


def merge(Room, Message, key, rows, spellings):
    names = spellings | {room.name for room in rows}
    messages = Message.objects.filter(room__in=names)
    first_ids = dict(messages.order_by().values("room").annotate(first=Min("id")).values_list("room", "first"))
    rows.sort(key=lambda room: (room.name not in first_ids, first_ids.get(room.name, 0), room.pk))
    oldest = min(first_ids, key=first_ids.get) if first_ids else rows[0].name
    print(f"\n  Merging rooms {', '.join(map(repr, sorted(names)))} into {oldest!r} (key {key!r}).", end="")

    repeated = (
        messages.filter(client_id__isnull=False)
        .order_by()
        .values("user", "client_id")
        .annotate(count=Count("id"), latest=Max("id"))
        .filter(count__gt=1)
    )
    for row in repeated:
        messages.filter(user=row["user"], client_id=row["client_id"]).exclude(id=row["latest"]).update(client_id=None)
    # Unnumbered first, so that no message takes a seq another one still holds.
    messages.update(seq=None)
    seq, after = 0, 0
    while True:
        batch = list(messages.filter(id__gt=after).order_by("id").only("id")[:BATCH])
        if not batch:
            break
        for message in batch:
            seq += 1
            message.room, message.seq = key, seq
        Message.objects.bulk_update(batch, ["room", "seq"])
        after = batch[-1].id

    private = [room for room in rows if room.private]
    owner = next((room.created_by_id for room in private or rows if room.created_by_id), None)
    members = set()
    for room in rows:
        members.update(room.members.values_list("pk", flat=True))
        if private and room.created_by_id not in (None, owner):
            members.add(room.created_by_id)
    if rows:
        survivor = rows[0]
        Room.objects.filter(pk__in=[room.pk for room in rows[1:]]).delete()
    else:
        survivor = Room(name=oldest)
    survivor.name, survivor.key, survivor.last_seq = oldest, key, seq
    survivor.private, survivor.created_by_id = bool(private), owner
    survivor.save()
    survivor.members.set(members)


def unfold(apps, schema_editor):
    """Back to rooms that go by their names: each room's messages and mutes take its shown name again.

    Merged rooms stay merged, under their shown name.
    """
    Room = apps.get_model("chat", "Room")
    Message = apps.get_model("chat", "Message")
    Restriction = apps.get_model("chat", "Restriction")
    for name, key in Room.objects.exclude(key=None).values_list("name", "key"):
        if name != key:
            Message.objects.filter(room=key).update(room=name)
            Restriction.objects.filter(room=key).update(room=name)


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0005_private_rooms"),
    ]

    operations = [
        migrations.AddField(
            model_name="room",
            name="key",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.RunPython(fold_room_names, unfold),
    ]
