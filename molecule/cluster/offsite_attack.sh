#!/bin/bash
# What a compromised database host would try against its copy on a backup
# host, with its own backup key and the repository's password:
#   offsite_attack.sh REPOSITORY-URL SNAPSHOT-TO-FORGET SNAPSHOT-TO-DELETE
# (the backup role's URL of the copy, rclone:user@host:path, or sftp:... for
# the SFTP setup before it). One line per attempt: "<what>: refused", or
# "<what>: DONE" when the backup host let it happen.
set -uo pipefail
url=$1 forget_id=$2 delete_id=$3
target=${url#*:}
login=${target%%:*}
path=${target#*:}
key=/etc/chat-backup/id_ed25519
ssh_options=(-i "$key" -o UserKnownHostsFile=/etc/chat-backup/known_hosts -o StrictHostKeyChecking=accept-new
             -o BatchMode=yes -o ConnectTimeout=20)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
export RESTIC_PASSWORD_FILE=/etc/chat-backup/password RESTIC_CACHE_DIR=$work/cache
case "$url" in
  sftp:*) restic_options=(-o "sftp.command=ssh ${ssh_options[*]} $login -s sftp") ;;
  *) restic_options=(-o "rclone.program=ssh ${ssh_options[*]} $login") ;;
esac
say() { if [ "$2" -eq 0 ]; then echo "$1: DONE"; else echo "$1: refused"; fi; }

# Its own key without the forced command, in the keys file sshd reads (the
# SFTP setup's in the user's home, and the root-owned one), over SFTP and scp.
cp "$key.pub" "$work/authorized_keys"
printf 'put %s .ssh/authorized_keys\n' "$work/authorized_keys" | timeout 60 sftp -b - "${ssh_options[@]}" "$login" > /dev/null 2>&1
say "rewrite ~/.ssh/authorized_keys over SFTP" $?
timeout 60 scp "${ssh_options[@]}" "$work/authorized_keys" "$login:/etc/ssh/authorized_keys.d/chat-backup" > /dev/null 2>&1
say "rewrite /etc/ssh/authorized_keys.d/chat-backup over scp" $?

# A shell: the command's output, not ssh's exit status (the forced command
# may well exit 0).
output=$(timeout 60 ssh "${ssh_options[@]}" "$login" 'echo shell-$((6*7))' < /dev/null 2> /dev/null)
[[ "$output" == *shell-42* ]]
say "run a command in a shell" $?

timeout 180 restic --repo "$url" "${restic_options[@]}" forget "$forget_id" > /dev/null 2>&1
say "restic forget $forget_id" $?

# Below restic: the snapshot's file deleted, then overwritten, by hand.
case "$url" in
  sftp:*)
    printf 'rm %s/snapshots/%s\n' "$path" "$delete_id" | timeout 60 sftp -b - "${ssh_options[@]}" "$login" > /dev/null 2>&1
    say "delete snapshots/$delete_id over SFTP" $?
    ;;
  *)
    # restic's REST protocol over HTTP/2 on the SSH channel, as restic's rclone
    # backend speaks it: a local port joined to ssh's stdin and stdout.
    python3 - "${ssh_options[@]}" "$login" <<'BRIDGE' &
import asyncio, sys

async def serve(reader, writer):
    ssh = await asyncio.create_subprocess_exec("ssh", "-T", *sys.argv[1:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)

    async def pump(source, sink):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()

    await asyncio.gather(pump(reader, ssh.stdin), pump(ssh.stdout, writer), return_exceptions=True)

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 18099)
    await server.serve_forever()

asyncio.run(main())
BRIDGE
    sleep 1
    status=$(curl -sS --http2-prior-knowledge -X DELETE -o /dev/null -w '%{http_code}' "http://127.0.0.1:18099/snapshots/$delete_id")
    [[ "$status" == 2* ]]
    say "DELETE /snapshots/$delete_id over rclone's channel (HTTP $status)" $?
    status=$(curl -sS --http2-prior-knowledge -X POST --data-binary overwritten -o /dev/null -w '%{http_code}' "http://127.0.0.1:18099/snapshots/$delete_id")
    [[ "$status" == 2* ]]
    say "POST over /snapshots/$delete_id over rclone's channel (HTTP $status)" $?
    ;;
esac
