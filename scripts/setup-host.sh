#!/usr/bin/env bash
# Prepares this machine to run the toolkit and its lab: host packages, a docker engine, the Python venv.
# Safe to run again: it only installs or starts what is missing. Called by `make setup`.
set -euo pipefail

cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ssh >/dev/null || need+=(openssh-client)
command -v rsync >/dev/null || need+=(rsync)
# The offline bundle is built from source: Go for the components, gcc (static libc) for pause and flannel.
command -v go >/dev/null || need+=(golang-go)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v dpkg-deb >/dev/null || need+=(dpkg)
# The bundle's apt repository: its Release file by apt-ftparchive, signed with gpg.
command -v apt-ftparchive >/dev/null || need+=(apt-utils)
command -v gpg >/dev/null || need+=(gnupg)
# `bundle build --source upstream` copies images from registries with skopeo.
command -v skopeo >/dev/null || need+=(skopeo)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian's archive"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's PostgreSQL server programs for the tests of the synthetic Run:ai backend, which start throwaway
# clusters of their own: no cluster "main" and no server running for the machine (create_main_cluster).
pg_bin=/usr/lib/postgresql/15/bin
if [ ! -x "$pg_bin/initdb" ] || [ ! -x "$pg_bin/pg_dump" ]; then
  echo "setup: installing postgresql-15 from Debian's archive (server programs for tests, no cluster)"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-common >/dev/null
  $sudo sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi

# promtool, for `make test`'s check of the GPU health alert rules (monitoring/prometheus): taken out of
# Debian's prometheus package (a static Go program), without installing or starting a Prometheus server.
promtool=$HOME/.cache/appliance/bin/promtool
if [ ! -x "$promtool" ]; then
  echo "setup: extracting promtool from Debian's prometheus package"
  work=$(mktemp -d)
  (cd "$work" && { apt-get download -qq prometheus 2>/dev/null \
    || { $sudo apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; } \
    && dpkg-deb -x prometheus_*.deb root)
  mkdir -p "$(dirname "$promtool")"
  install -m 0755 "$work/root/usr/bin/promtool" "$promtool"
  rm -rf "$work"
fi

# kube-bench (the CIS Kubernetes Benchmark), for the lab tier: built from its source in ../shared/upstream
# (Apache-2.0; the module proxy refuses it, its Go dependencies come from the proxy), with its cfg/ beside
# it, once per source. The build takes about 3 minutes and leaves the shared source as it is.
kube_bench_src=../shared/upstream/kube-bench-a73ce37
kube_bench_out=$HOME/.cache/appliance/kube-bench/a73ce37
if [ -d "$kube_bench_src" ] && [ ! -x "$kube_bench_out/kube-bench" ]; then
  echo "setup: building kube-bench from $kube_bench_src (about 3 minutes)"
  work=$(mktemp -d)
  cp -r "$kube_bench_src/." "$work"
  # Its go.mod asks for Go 1.26: with an older Go the build fails, setup goes on, and the lab tier's
  # kube-bench test says that kube-bench is missing.
  if (cd "$work" && GOFLAGS=-mod=mod GOTOOLCHAIN=local GOMODCACHE=$HOME/.cache/appliance/go/pkg/mod \
    GOCACHE=$HOME/.cache/appliance/go/cache go build -trimpath \
    -ldflags "-s -w -X github.com/aquasecurity/kube-bench/cmd.KubeBenchVersion=a73ce37" -o kube-bench .); then
    mkdir -p "$kube_bench_out"
    rm -rf "$kube_bench_out/cfg"
    cp -r "$work/cfg" "$kube_bench_out/cfg"
    install -m 0755 "$work/kube-bench" "$kube_bench_out/kube-bench"
  else
    echo "setup: WARNING: kube-bench did not build (it needs Go 1.26; this is $(go version))" >&2
  fi
  rm -rf "$work"
fi

# A docker engine: the system's service where systemd runs it, else dockerd in the background
# (machines of this kind boot without an engine and without systemd as PID 1).
if ! docker info >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    echo "setup: starting docker.service"
    $sudo systemctl start docker
  else
    echo "setup: starting dockerd (log: /var/log/appliance-dockerd.log)"
    $sudo sh -c 'nohup dockerd >/var/log/appliance-dockerd.log 2>&1 &'
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "setup: docker engine did not start; see /var/log/appliance-dockerd.log" >&2; exit 1; }
fi

# Lab nodes share this kernel: every kubelet, kube-proxy and flannel of every lab takes inotify instances
# from one per-user budget (128 by default), and kube-proxy exits "too many open files" when it runs out.
# Raised as kind's documentation advises, never lowered.
for limit in fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=524288; do
  key=${limit%%=*} want=${limit#*=}
  if [ "$(sysctl -n "$key")" -lt "$want" ]; then $sudo sysctl -q -w "$limit"; fi
done

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing Python packages (pinned by constraints.txt)"
  "$venv/bin/pip" install --quiet -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi
echo "setup: ready ($("$venv/bin/appliance" --help >/dev/null && echo 'appliance CLI installed'), docker $(docker version --format '{{.Server.Version}}'))"
