#!/usr/bin/env bash
# Checks on the built image, run by `make docker-smoke` once the image answers (docker-smoke's
# --then: DOCKER_HOST points at its private engine, the image is tagged transerve:smoke and a
# first container "smoke" serves on port 8000 with host networking).
#  1. a real translation from the running container, of a text and of a file
#  2. it runs as a non-root user
#  3. a second container with a read-only root filesystem (no tmpfs at all) serves too
#  4. `docker stop` (SIGTERM) ends it with exit code 0
set -euo pipefail
TAG=${TAG:-transerve:smoke}
body='{"q":"Ein Hund läuft im Park.","source":"de","target":"en"}'

echo "container-checks: translate"
out=$(curl -fsS -X POST 127.0.0.1:8000/translate -H "content-type: application/json" -d "$body")
echo "  $out"
grep -q '"translatedText":"A dog' <<<"$out" || { echo "unexpected translation"; exit 1; }

echo "container-checks: translate a file"
printf 'Ein Hund läuft im Park.\n' > /tmp/smoke-file.txt
url=$(curl -fsS -X POST 127.0.0.1:8000/translate_file -F source=de -F target=en -F file=@/tmp/smoke-file.txt \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["translatedFileUrl"])')
got=$(curl -fsS "$url")
echo "  $url -> $got"
grep -q '^A dog' <<<"$got" || { echo "unexpected translated file"; exit 1; }

echo "container-checks: non-root"
uid=$(docker exec smoke id -u)
echo "  uid $uid"
[ "$uid" != "0" ] || { echo "the container runs as root"; exit 1; }

echo "container-checks: read-only root filesystem"
docker rm -f smoke-ro >/dev/null 2>&1 || true
docker run -d --name smoke-ro --network host --read-only -e TRANSERVE_PORT=8001 "$TAG" >/dev/null
trap 'docker rm -f smoke-ro >/dev/null 2>&1 || true' EXIT
for _ in $(seq 60); do curl -fs 127.0.0.1:8001/ready >/dev/null && break; sleep 1; done
out=$(curl -fsS -X POST 127.0.0.1:8001/translate -H "content-type: application/json" -d "$body") \
  || { docker logs smoke-ro | tail -20; exit 1; }
echo "  $out"
grep -q '"translatedText":"A dog' <<<"$out" || { echo "unexpected translation"; exit 1; }

echo "container-checks: docker stop -> exit 0"
docker stop -t 20 smoke-ro >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' smoke-ro)
echo "  exit code $code"
[ "$code" = "0" ] || { docker logs smoke-ro | tail -20; exit 1; }
echo "container-checks: OK"
