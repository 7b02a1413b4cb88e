#!/usr/bin/env bash
# Build the documentation site so that it works air-gapped, and prove it.
#
# mkdocs-material loads Mermaid from a CDN when a page has a diagram, and Google Fonts always;
# a site opened where the data platform runs (often without internet) would show raw diagram
# code. So the theme's web fonts are off (mkdocs.yml: font: false) and Mermaid is served by the
# site itself: fetched here from the npm registry at a pinned version (with npm when the machine
# has it, else straight from the registry, so Node.js is not needed), its tarball checked
# against the pinned sha512, into docs/assets/mermaid/ (not committed). The built site is then
# checked: no page loads a script, style sheet, image or frame from outside.
#
# Usage: bash scripts/docs.sh [SITE_DIR]   (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
MERMAID_VERSION=11.17.2 # the major version mkdocs-material 9 is made for
MERMAID_SHA512=V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg==
target=docs/assets/mermaid
if [ ! -s "$target/mermaid.min.js" ] || [ "$(cat "$target/VERSION" 2>/dev/null)" != "$MERMAID_VERSION" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if command -v npm >/dev/null; then # npm honours the machine's registry mirror and proxy
    (cd "$work" && npm pack --silent "mermaid@$MERMAID_VERSION" >/dev/null)
  else # no Node.js here: the same tarball straight from the registry
    registry=${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}
    .venv/bin/python -c 'import sys, urllib.request
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "${registry%/}/mermaid/-/mermaid-$MERMAID_VERSION.tgz" "$work/mermaid-$MERMAID_VERSION.tgz"
  fi
  tarball=$(echo "$work"/mermaid-*.tgz)
  got=$(.venv/bin/python -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")
  if [ "$got" != "$MERMAID_SHA512" ]; then
    echo "mermaid@$MERMAID_VERSION from npm has sha512 $got, pinned $MERMAID_SHA512" >&2
    exit 1
  fi
  tar -xzf "$tarball" -C "$work" package/dist/mermaid.min.js
  mkdir -p "$target"
  mv "$work/package/dist/mermaid.min.js" "$target/mermaid.min.js"
  echo "$MERMAID_VERSION" >"$target/VERSION"
fi
site=${1:-$(mktemp -d)}
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
.venv/bin/python scripts/site_check.py "$site"
