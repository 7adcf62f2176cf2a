#!/usr/bin/env bash
# Builds the images of the test services on this machine, pulling nothing, and prints
# their names as shell assignments (`eval "$(scripts/images.sh)"`); progress goes to
# stderr. Each image is tagged with a hash of its recipe (its folder under images/, the
# base image, and any binary it copies), so a second run reuses what is built and a
# changed recipe builds anew.
#
#   base      Debian bookworm, `debootstrap --variant=minbase`, imported with `docker import`
#   postgres  base + Debian's postgresql-15 (images/postgres)
#   mariadb   base + Debian's mariadb-server (images/mariadb)
#   kafka     base + the tansu binary scripts/test.sh installs (images/kafka)
#   aws       base + moto[server] from PyPI (images/aws)
#   nats      FROM scratch: the machine's nats-server with the libraries ldd lists (images/nats)
#   redis     base + Debian's redis-server (images/redis)
#   rabbitmq  base + Debian's rabbitmq-server (images/rabbitmq)
#
# A variable already set (STREAMS_IMAGE_POSTGRES=postgres:16, ...; names in
# images/images.env) is printed as is and its image is not built: with a registry, use
# the official images. Needs a running Docker engine, root (for debootstrap) and the
# Debian and Python package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

export STREAMS_TOOLS="${STREAMS_TOOLS:-$HOME/.cache/streams-tools}"
export DOCKER_BUILDKIT=0
PREFIX=${STREAMS_IMAGE_PREFIX:-streams-test}
SUITE=bookworm
MIRROR=${STREAMS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
MOTO_VERSION=5.2.5

log() { echo "images: $*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Removes the other tags of an image's repository (earlier recipes), keeping the disk bounded.
prune_others() {
  docker images --format '{{.Repository}}:{{.Tag}}' "${1%:*}" | grep -vxF "$1" |
    xargs -r docker rmi >/dev/null 2>&1 || true
}

# A short hash of the given files' contents and of the extra words given after `--`.
recipe_hash() {
  local files=() extra=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do files+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  extra=("$@")
  {
    for f in "${files[@]}"; do
      echo "$f"
      cat "$f"
    done
    printf '%s\n' "${extra[@]}"
  } | sha256sum | cut -c1-12
}

# Debian base: debootstrap into a temporary folder, then docker import.
build_base() {
  local tag
  tag="$PREFIX/debian:$SUITE-$(recipe_hash -- "$SUITE" minbase "$MIRROR" base-1)"
  if ! image_exists "$tag"; then
    command -v debootstrap >/dev/null || {
      log "installing debootstrap"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    local root
    root=$(mktemp -d)
    log "building $tag (debootstrap --variant=minbase $SUITE)"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$STREAMS_TOOLS/debootstrap.log" 2>&1 || {
      log "debootstrap failed; see $STREAMS_TOOLS/debootstrap.log"
      rm -rf "$root"
      return 1
    }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
    rm -rf "$root"
    prune_others "$tag"
  fi
  echo "$tag"
}

# moto's wheels for the aws image, downloaded once with the host's pip.
moto_wheels() {
  local dir="$STREAMS_TOOLS/moto-wheels-$MOTO_VERSION"
  if [ ! -e "$dir/.complete" ]; then
    log "downloading moto[server]==$MOTO_VERSION wheels into $dir"
    rm -rf "$dir"
    python3 -m pip download --quiet --dest "$dir" --only-binary=:all: --python-version 3.11 \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      "moto[server]==$MOTO_VERSION" >"$STREAMS_TOOLS/moto-wheels.log" 2>&1 || {
      log "pip download failed; see $STREAMS_TOOLS/moto-wheels.log"
      return 1
    }
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# The nats image's root: the machine's nats-server (as scripts/services.d/nats.sh finds
# it) and every library `ldd` lists, at their paths. Rebuilt each run (a few MB); its
# contents count in the image's hash, so a new nats-server builds a new image.
nats_rootfs() {
  # shellcheck source=scripts/services.d/nats.sh
  source scripts/services.d/nats.sh
  local bin dir="$STREAMS_TOOLS/nats-rootfs" lib
  bin=$(nats_server_bin) || return 1
  rm -rf "$dir"
  mkdir -p "$dir/usr/local/bin"
  cp -L "$bin" "$dir/usr/local/bin/nats-server"
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  echo "$dir"
}

# One service image from images/<name>/ on the base; NAME=PATH arguments copy a file or
# folder into the build context as NAME (its contents count in the hash).
build_service() {
  local name=$1 base=$2
  shift 2
  local dir="images/$name" files extra=() f tag
  mapfile -t files < <(find "$dir" -type f | sort)
  for f in "$@"; do
    extra+=("${f%%=*} $(cd "${f#*=}" 2>/dev/null && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum || sha256sum <"${f#*=}")")
  done
  tag="$PREFIX/$name:$(recipe_hash "${files[@]}" -- "$base" "${extra[@]}")"
  if ! image_exists "$tag"; then
    log "building $tag"
    local ctx start=$SECONDS
    ctx=$(mktemp -d)
    cp -a "$dir"/. "$ctx"/
    for f in "$@"; do cp -a "${f#*=}" "$ctx/${f%%=*}"; done
    if ! docker build -q --force-rm --build-arg "BASE=$base" -t "$tag" "$ctx" >"$STREAMS_TOOLS/image-$name.log" 2>&1; then
      rm -rf "$ctx"
      log "building $tag failed; see $STREAMS_TOOLS/image-$name.log"
      return 1
    fi
    rm -rf "$ctx"
    log "built $tag in $((SECONDS - start))s"
    prune_others "$tag"
  fi
  echo "$tag"
}

main() {
  mkdir -p "$STREAMS_TOOLS"
  docker info >/dev/null 2>&1 || {
    log "no Docker engine answers (start dockerd, or run scripts/test.sh, which does)"
    return 1
  }
  local start=$SECONDS base=""
  need_base() { [ -n "$base" ] || base=$(build_base); }
  if [ -z "${STREAMS_IMAGE_POSTGRES:-}" ]; then need_base; STREAMS_IMAGE_POSTGRES=$(build_service postgres "$base"); fi
  if [ -z "${STREAMS_IMAGE_MARIADB:-}" ]; then need_base; STREAMS_IMAGE_MARIADB=$(build_service mariadb "$base"); fi
  if [ -z "${STREAMS_IMAGE_AWS:-}" ]; then need_base; STREAMS_IMAGE_AWS=$(build_service aws "$base" "wheels=$(moto_wheels)"); fi
  if [ -z "${STREAMS_IMAGE_NATS:-}" ]; then
    local rootfs
    rootfs=$(nats_rootfs)
    STREAMS_IMAGE_NATS=$(build_service nats scratch "rootfs=$rootfs")
  fi
  if [ -z "${STREAMS_IMAGE_REDIS:-}" ]; then need_base; STREAMS_IMAGE_REDIS=$(build_service redis "$base"); fi
  if [ -z "${STREAMS_IMAGE_RABBITMQ:-}" ]; then need_base; STREAMS_IMAGE_RABBITMQ=$(build_service rabbitmq "$base"); fi
  if [ -z "${STREAMS_IMAGE_KAFKA:-}" ]; then
    need_base
    # shellcheck source=scripts/services.d/kafka.sh
    source scripts/services.d/kafka.sh
    STREAMS_IMAGE_KAFKA=$(build_service kafka "$base" "tansu=$(tansu_bin)")
  fi
  log "images ready in $((SECONDS - start))s"
  local v
  for v in STREAMS_IMAGE_KAFKA STREAMS_IMAGE_AWS STREAMS_IMAGE_POSTGRES STREAMS_IMAGE_MARIADB \
    STREAMS_IMAGE_NATS STREAMS_IMAGE_REDIS STREAMS_IMAGE_RABBITMQ; do
    echo "export $v=${!v}"
  done
}

main "$@"
