#!/usr/bin/env bash
# Smoke test for a running Synapse (or any homeserver) on loopback:
# register a user via UIA m.login.dummy, create a room, send N messages
# back to back, and fail if any response is not 200 (e.g. 429 rate limited).
#
# Usage: smoke.sh <port> [n_messages]
set -euo pipefail
PORT="$1"
N="${2:-20}"
BASE="http://127.0.0.1:$PORT/_matrix/client/v3"
USER="smoke$(date +%s%N | tail -c 9)"

# 1) UIA: first call returns 401 with a session
resp="$(curl -sS -X POST "$BASE/register" -H 'Content-Type: application/json' \
	-d "{\"username\":\"$USER\",\"password\":\"pw-$USER\"}" -w '\n%{http_code}')"
code="${resp##*$'\n'}"; body="${resp%$'\n'*}"
[[ "$code" == 401 ]] || { echo "expected 401, got $code: $body" >&2; exit 1; }
session="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["session"])' "$body")"

# 2) complete with m.login.dummy
resp="$(curl -sS -X POST "$BASE/register" -H 'Content-Type: application/json' \
	-d "{\"username\":\"$USER\",\"password\":\"pw-$USER\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$session\"}}" \
	-w '\n%{http_code}')"
code="${resp##*$'\n'}"; body="${resp%$'\n'*}"
[[ "$code" == 200 ]] || { echo "register failed $code: $body" >&2; exit 1; }
token="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["access_token"])' "$body")"
echo "registered @$USER:localhost"

# 3) create a room
resp="$(curl -sS -X POST "$BASE/createRoom" -H "Authorization: Bearer $token" \
	-H 'Content-Type: application/json' -d '{"name":"smoke"}' -w '\n%{http_code}')"
code="${resp##*$'\n'}"; body="${resp%$'\n'*}"
[[ "$code" == 200 ]] || { echo "createRoom failed $code: $body" >&2; exit 1; }
room="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["room_id"])' "$body")"
echo "room $room"

# 4) N messages as fast as possible
declare -A codes=()
start_ns=$(date +%s%N)
for i in $(seq 1 "$N"); do
	c="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT \
		"$BASE/rooms/$room/send/m.room.message/txn$i-$RANDOM" \
		-H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
		-d "{\"msgtype\":\"m.text\",\"body\":\"msg $i\"}")"
	codes[$c]=$(( ${codes[$c]:-0} + 1 ))
done
ms=$((($(date +%s%N) - start_ns) / 1000000))
summary=""
for c in "${!codes[@]}"; do summary+="$c:${codes[$c]} "; done
echo "sent $N messages in ${ms} ms; status codes: $summary"
[[ "${codes[200]:-0}" == "$N" ]] || { echo "FAIL: not all messages returned 200" >&2; exit 1; }
echo "OK: no rate limiting (no 429)"
