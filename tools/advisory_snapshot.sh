#!/usr/bin/env bash
# Refreshes deny/advisory-db.tar.gz: the RustSec advisory database (public domain, CC0-1.0;
# https://github.com/rustsec/advisory-db) that `make deny` checks every dependency against.
# It is kept in the repository because CI reaches package registries only, not GitHub: the
# check is as current as this snapshot, so refresh it when dependencies change and at least
# monthly. On a machine that reaches GitHub, `make deny-latest` checks the live database.
#
# usage: tools/advisory_snapshot.sh PATH_TO_ADVISORY_DB_CHECKOUT
set -euo pipefail
src="${1:?usage: $0 PATH_TO_ADVISORY_DB_CHECKOUT}"
if [ ! -d "$src/crates" ]; then
  echo "$src has no crates/ directory: not a checkout of rustsec/advisory-db" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p deny
# Reproducible: the same checkout gives the same bytes.
tar -C "$src" --sort=name --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00Z' \
  -cf - crates rust LICENSE.txt | gzip -n -9 > deny/advisory-db.tar.gz
git -C "$src" log -1 --format='rustsec/advisory-db %H (%cs)' > deny/advisory-db.snapshot
echo "deny/advisory-db.tar.gz: $(cat deny/advisory-db.snapshot), $(find "$src/crates" -name '*.md' | wc -l) advisories"
