# Sourced by build.sh and the tests: a private podman/buildah configuration and store under
# ~/.cache/lanes/containers, with the settings machines without systemd need (runc, cgroupfs,
# explicit ulimits, a file event log). LANES_CONTAINERS_DIR moves it.
dir=${LANES_CONTAINERS_DIR:-$HOME/.cache/lanes/containers}
mkdir -p "$dir"
cat > "$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
CONF
cat > "$dir/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_STORAGE_CONF="$dir/storage.conf" CONTAINERS_CONF="$dir/containers.conf"
