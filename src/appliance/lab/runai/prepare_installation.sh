#!/usr/bin/env bash
# Synthetic stand-in for Run:ai's deploy/prepare_installation.sh (built for the appliance's tests): loads
# the tarball's images and pushes them to the site's registry, under the path after their first component:
#   gcr.io/run-ai-prod/backend:2.9.0 -> $REGISTRY_URL/run-ai-prod/backend:2.9.0
# Usage: REGISTRY_URL=NAME:PORT ./prepare_installation.sh   (run from the tarball's deploy/ directory)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${REGISTRY_URL:-}" ]]; then
    echo "prepare_installation.sh: set REGISTRY_URL to the registry's NAME:PORT, for example registry.local:5000" >&2
    exit 2
fi
if [[ "$REGISTRY_URL" == http* ]]; then
    echo "prepare_installation.sh: REGISTRY_URL=$REGISTRY_URL must be NAME:PORT, without http:// or https://" >&2
    exit 2
fi
REGISTRY_URL="${REGISTRY_URL%/}"

echo "loading images from $here/images.tar"
docker load -i "$here/images.tar"

while IFS= read -r image || [[ -n "$image" ]]; do
    [[ -z "$image" ]] && continue
    target="$REGISTRY_URL/${image#*/}"
    echo "pushing $image as $target"
    docker tag "$image" "$target"
    docker push "$target"
done < "$here/images.txt"

echo "all images pushed to $REGISTRY_URL"
