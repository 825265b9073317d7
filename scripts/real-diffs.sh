#!/usr/bin/env bash
# Builds a set of large, real diffs for the review benchmark (`scripts/bench.sh real-diffs`):
# two published versions of a few crates, fetched from crates.io with cargo into scratch
# projects, unpacked, and diffed as a PR would be (the old version committed, then the new one,
# `git diff` between the two commits: real paths, renames, new and deleted files). Only the
# registry is reached. The diffs land in target/real-diffs/ (not in git: the commands are kept
# here, not the megabytes); the scratch projects and sources are removed at the end.
#
#   scripts/real-diffs.sh [OUT_DIR]
#
# Pairs can be replaced with REAL_DIFFS="name old new;name old new;...". A diff already built is
# kept (delete it to build it again).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/real-diffs}
mkdir -p "$out"

# From about 100 KB to a few MB of diff.
IFS=';' read -r -a pairs <<<"${REAL_DIFFS:-serde_json 1.0.100 1.0.128;regex-syntax 0.7.5 0.8.4;syn 1.0.109 2.0.77;tokio 1.28.0 1.40.0}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo_home=${CARGO_HOME:-$HOME/.cargo}

# Unpacks `name-version` into $scratch/src/ from cargo's download cache, fetching it with an
# ordinary `cargo fetch` of a scratch project that depends on exactly that version.
unpack() {
  local name=$1 version=$2 project=$scratch/fetch-$1-$2
  mkdir -p "$project/src"
  touch "$project/src/lib.rs"
  cat >"$project/Cargo.toml" <<EOF
[package]
name = "fetch-for-real-diffs"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$name = { version = "=$version", default-features = false }

[workspace]
EOF
  (cd "$project" && cargo fetch --quiet)
  local crate
  crate=$(find "$cargo_home/registry/cache" -name "$name-$version.crate" -print -quit)
  if [[ -z "$crate" ]]; then
    echo "real-diffs: $name-$version.crate is not in $cargo_home/registry/cache after cargo fetch" >&2
    exit 1
  fi
  mkdir -p "$scratch/src"
  tar -xzf "$crate" -C "$scratch/src"
}

git_quiet() { git -c user.name=real-diffs -c user.email=real-diffs@localhost -c core.autocrlf=false "$@"; }

printf '%-36s %10s %7s %9s\n' diff bytes files '+lines'
for pair in "${pairs[@]}"; do
  read -r name old new <<<"$pair"
  diff_file="$out/$name-$old-$new.diff"
  if [[ ! -s "$diff_file" ]]; then
    unpack "$name" "$old"
    unpack "$name" "$new"
    repo=$scratch/repo-$name
    git_quiet init --quiet "$repo"
    cp -R "$scratch/src/$name-$old/." "$repo/"
    git_quiet -C "$repo" add --all --force .
    git_quiet -C "$repo" commit --quiet --no-verify -m "$name $old"
    find "$repo" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
    cp -R "$scratch/src/$name-$new/." "$repo/"
    git_quiet -C "$repo" add --all --force .
    git_quiet -C "$repo" commit --quiet --no-verify -m "$name $new"
    git_quiet -C "$repo" diff --find-renames HEAD~1 HEAD >"$diff_file.part"
    mv "$diff_file.part" "$diff_file"
  fi
  files=$(grep -c '^diff --git ' "$diff_file" || true)
  added=$(grep -c '^+[^+]\|^+$' "$diff_file" || true)
  printf '%-36s %10s %7s %9s\n' "$(basename "$diff_file")" "$(wc -c <"$diff_file")" "$files" "$added"
done
