#!/usr/bin/env bash
# Build llmsvc's container images: `make images` runs this.
#
#   images/build.sh [--print] PREFIX TAG [NAME...]
#
# Tags PREFIX/NAME:TAG for every NAME (default: all of them, in the order below). --print only
# prints the `docker build` commands, one a line, and needs no Docker. Without a docker command or
# with its daemon unreachable it says so in one line and exits 1. Build arguments of the engine
# flavours come from images/<name>.args (NAME=value lines, '#' comments).
set -euo pipefail
cd "$(dirname "$0")/.."

# name -> Dockerfile (the build context is always the repository root; see .dockerignore)
declare -A DOCKERFILES=(
  [router]=Dockerfile.router
  [registry]=Dockerfile.registry
  [operator]=operator/Dockerfile
  [babysitter]=Dockerfile.babysitter
  [babysitter-vllm]=Dockerfile.babysitter
  [babysitter-sglang]=Dockerfile.babysitter
  [babysitter-llamacpp]=Dockerfile.babysitter
)
ALL=(router registry operator babysitter babysitter-vllm babysitter-sglang babysitter-llamacpp)

print_only=0
if [[ "${1:-}" == "--print" ]]; then
  print_only=1
  shift
fi
if [[ $# -lt 2 || -z "$1" || -z "$2" ]]; then
  echo "usage: images/build.sh [--print] PREFIX TAG [NAME...]" >&2
  exit 2
fi
prefix=$1 tag=$2
shift 2
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ALL[@]}")
for name in "${names[@]}"; do
  if [[ -z "${DOCKERFILES[$name]:-}" ]]; then
    echo "images/build.sh: unknown image '$name' (one of: ${ALL[*]})" >&2
    exit 2
  fi
done

if [[ $print_only -eq 0 ]]; then
  if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "make images: Docker is not available here (no docker command, or its daemon is unreachable); no image built" >&2
    exit 1
  fi
fi

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
for name in "${names[@]}"; do
  cmd=(docker build --file "${DOCKERFILES[$name]}" --tag "$prefix/$name:$tag"
       --build-arg "VERSION=$tag" --build-arg "REVISION=$revision")
  if [[ -f "images/$name.args" ]]; then
    while IFS= read -r line; do
      [[ -z "$line" || "$line" == \#* ]] || cmd+=(--build-arg "$line")
    done < "images/$name.args"
  fi
  cmd+=(.)
  if [[ $print_only -eq 1 ]]; then
    echo "${cmd[*]}"
  else
    echo "+ ${cmd[*]}"
    "${cmd[@]}"
  fi
done
