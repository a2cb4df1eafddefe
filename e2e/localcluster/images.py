"""Container images for the local cluster, built and imported without a registry or a Docker engine.

Each image is an OCI image layout written with the standard library (uncompressed layer tars, an
image config, a manifest and an `index.json` naming the image) and streamed into
`ctr -n k8s.io images import -`. Layers, bottom to top:

  base     Debian bookworm from mmdebstrap (python3 3.11, CA certificates, libnuma, libgomp)
  nonroot  /etc/passwd and /etc/group with `nonroot` (65532), its home, a writable /tmp
  env      the slim environment (operator + router dependencies, no torch or vLLM) or the
           project's .venv (vLLM's CPU build) at /opt/pixtral/venv
  code     pixtral_operator and pixtral_runtime as plain packages in /opt/pixtral/code

A layer is cached on disk under the hash of its inputs, so after a code change only the small code
layer is written; blobs containerd already holds are left out of the import stream, so only that
layer is imported too. Tags are short hashes of the image config (which names every layer's
digest), so changed content always gets a new tag and `imagePullPolicy: IfNotPresent` never runs
a stale image.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# The one place that names the images.
OPERATOR_REPO = "localhost/pixtral-operator"
ROUTER_REPO = "localhost/pixtral-router"
RUNTIME_CPU_REPO = "localhost/pixtral-runtime-cpu"
COREDNS_REPO = "localhost/coredns"
PAUSE_REPO = "localhost/pause"
# The in-cluster monitoring stack (localcluster/monitoring.py), each a static Go binary.
PROMETHEUS_REPO = "localhost/prometheus"
PROMETHEUS_OPERATOR_REPO = "localhost/prometheus-operator"
CONFIG_RELOADER_REPO = "localhost/prometheus-config-reloader"
REPOSITORIES = {
    "operator": OPERATOR_REPO,
    "router": ROUTER_REPO,
    "runtime-cpu": RUNTIME_CPU_REPO,
    "coredns": COREDNS_REPO,
    "pause": PAUSE_REPO,
    "prometheus": PROMETHEUS_REPO,
    "prometheus-operator": PROMETHEUS_OPERATOR_REPO,
    "prometheus-config-reloader": CONFIG_RELOADER_REPO,
}

NAMESPACE = "k8s.io"  # the containerd namespace the kubelet's CRI reads
NONROOT_UID = 65532  # the conventional "nonroot" user; the chart's securityContext expects it
PAUSE_UID = 65535  # what the upstream pause image runs as
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "ca-certificates", "libnuma1", "libgomp1")
# The CPU engine's image also carries a C++ toolchain and Python's headers: torch's inductor
# compiles CPU kernels at run time (vLLM's TP=2 path fails with `InvalidCxxCompiler: No working C++
# compiler found` without it). The operator and router images stay without.
RUNTIME_PACKAGES = (*BASE_PACKAGES, "g++", "python3-dev")
PYTHON = "python3.11"  # Debian bookworm's interpreter; the venv's wheels must be built for it
CACHE_TAG = "cpython-311"  # its bytecode files' tag

CODE_DIR = "opt/pixtral/code"
VENV_DIR = "opt/pixtral/venv"
DIST_PACKAGES = f"usr/local/lib/{PYTHON}/dist-packages"  # Debian's site dir for local installs
HOME_DIR = "home/nonroot"

# Part of every cache key: bump it when what a layer holds changes for the same inputs.
RECIPE = "images-recipe-1"
# Fixed timestamps make the small layers byte-for-byte reproducible (same content, same tag).
# The environment layers keep their files' mtimes: their .pyc files are validated against them.
EPOCH = 1_700_000_000

MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
ANNOTATION_NAME = "io.containerd.image.name"
ANNOTATION_REF = "org.opencontainers.image.ref.name"

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_ENV = (
    f"HOME=/{HOME_DIR}",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
    # The image's filesystem belongs to root (and may be mounted read-only): nothing to write there.
    "PYTHONDONTWRITEBYTECODE=1",
)
# What `pixtral_runtime.router` imports from the runtime extra (runtime/router/*.py, runtime/cli.py):
# not fastapi, httpx, mistral-common or safetensors, which only the vLLM side uses.
ROUTER_DISTRIBUTIONS = frozenset({"uvicorn", "kubernetes", "orjson", "pillow", "opentelemetry-sdk",
                                  "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-exporter-otlp-proto-http"})

REPO_ROOT = Path(__file__).resolve().parents[2]
COPY_BUFFER = 1 << 20
# Cached layers kept per kind (newest first): a few small ones, so switching branches back and forth
# reuses them, but one venv layer only (6 GB each).
LAYERS_KEPT = {"venv": 1}
LAYERS_KEPT_DEFAULT = 3


class ImageError(RuntimeError):
    """An image could not be built or imported; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar on disk; for uncompressed layers digest and diff_id are the same."""

    path: Path
    digest: str
    size: int


@dataclass(frozen=True)
class RunConfig:
    user: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = "/"


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str
    layers: tuple[Layer, ...]
    config: bytes
    manifest: bytes

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)


# ---------------------------------------------------------------------------------------------
# Pure decisions


def cache_root(environ: Mapping[str, str], home: Path) -> Path:
    """Where built images live: beside the cluster binaries (e2e/tools/build-binaries.sh)."""
    return Path(environ.get("PIXTRAL_CACHE") or home / ".cache" / "pixtral-operator") / "images"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cache_key(kind: str, *inputs: str) -> str:
    """A layer's cache key: its kind and everything it is made from, hashed with the recipe."""
    blob = json.dumps([RECIPE, kind, *inputs], separators=(",", ":")).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:24]}"


def layer_kind(key: str) -> str:
    return key.rsplit("-", 1)[0]


def stale_layers(cached: Iterable[tuple[str, float]], new_key: str, keep: int) -> list[str]:
    """The cached layers (key, mtime) beyond the newest `keep` of new_key's kind, new_key kept."""
    same_kind = [(mtime, key) for key, mtime in cached if layer_kind(key) == layer_kind(new_key) and key != new_key]
    return [key for _, key in sorted(same_kind, reverse=True)[max(keep - 1, 0):]]


def canonical_json(value: Any) -> bytes:
    # Sorted keys and no whitespace: the same image always hashes to the same digest.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, data_digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": data_digest, "size": size, **extra}


def image_config(layers: Iterable[Layer], run: RunConfig) -> dict[str, Any]:
    config: dict[str, Any] = {"User": run.user, "Entrypoint": list(run.entrypoint), "WorkingDir": run.workdir}
    if run.cmd:
        config["Cmd"] = list(run.cmd)
    if run.env:
        config["Env"] = list(run.env)
    # No "created" field: a timestamp would change the digest (and the tag) of identical content.
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }


def image_manifest(config: bytes, layers: Iterable[Layer]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, sha256_digest(config), len(config)),
        "layers": [descriptor(MEDIA_LAYER, layer.digest, layer.size) for layer in layers],
    }


def image_index(image: Image) -> dict[str, Any]:
    # containerd names the imported image after io.containerd.image.name; the OCI annotation holds
    # the tag alone, as containerd's own exporter writes it.
    annotations = {ANNOTATION_NAME: image.ref, ANNOTATION_REF: image.tag}
    manifest = descriptor(
        MEDIA_MANIFEST, image.manifest_digest, len(image.manifest),
        platform={"architecture": "amd64", "os": "linux"}, annotations=annotations,
    )
    return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest]}


def content_tag(config: bytes) -> str:
    """A short hash of the image config, which lists every layer's digest and the run settings."""
    return hashlib.sha256(config).hexdigest()[:12]


def assemble(repository: str, layers: Iterable[Layer], run: RunConfig, tag: str | None = None) -> Image:
    layers = tuple(layers)
    config = canonical_json(image_config(layers, run))
    manifest = canonical_json(image_manifest(config, layers))
    return Image(repository, tag or content_tag(config), layers, config, manifest)


def passwd_with_nonroot(passwd: str) -> str:
    entry = f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/{HOME_DIR}:/usr/sbin/nologin"
    return _with_entry(passwd, "nonroot", entry)


def group_with_nonroot(group: str) -> str:
    return _with_entry(group, "nonroot", f"nonroot:x:{NONROOT_UID}:")


def _with_entry(text: str, name: str, entry: str) -> str:
    lines = [line for line in text.splitlines() if line and not line.startswith(f"{name}:")]
    return "\n".join([*lines, entry]) + "\n"


# Parts of the Debian rootfs no container needs: package lists (apt update recreates them),
# documentation other than the copyright files, manual pages, translations, logs and device nodes
# (the runtime mounts its own /dev).
_BASE_DROP = re.compile(
    r"^(var/lib/apt/lists/.+|var/cache/apt/.+\.bin|var/log/.+\.log|var/log/apt/.+"
    r"|usr/share/(man|info|locale)/.+|usr/share/doc/[^/]+/(?!copyright$).+|dev/.+)$"
)


def base_member_name(name: str) -> str:
    """mmdebstrap writes './etc/...'; layers name 'etc/...'."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/") if name not in {".", "./"} else ""


def keep_base_member(name: str) -> bool:
    return bool(name) and not _BASE_DROP.match(name)


def venv_entry_kept(rel: str) -> bool:
    """What of the project's .venv goes into the image: everything but the editable install of the
    project (its code goes into the code layer instead), its console scripts (replaced by wrappers)
    and the files the Makefile and uv keep beside the venv."""
    parts = rel.split("/")
    if rel in {".installed", ".lock", ".gitignore", "pyvenv.cfg", "bin/pixtral-operator", "bin/pixtral-runtime"}:
        return False
    name = parts[-1]
    if name.startswith("__editable__"):
        return False
    return not any(part.startswith("pixtral_operator-") and part.endswith(".dist-info") for part in parts)


def venv_symlink_target(target: str, venv_root: str) -> str:
    """The venv's interpreter links point at the host's Python; in the image they point at Debian's."""
    if not os.path.isabs(target):
        return target
    if target.startswith(venv_root.rstrip("/") + "/"):
        return "/" + VENV_DIR + target[len(venv_root.rstrip("/")):]
    if re.fullmatch(r".*/python3(\.\d+)?", target):
        return f"/usr/bin/{PYTHON}"
    return target


def rewrite_venv_prefix(data: bytes, venv_root: str) -> bytes:
    """Shebangs and activate scripts name the venv's absolute path; the image has it elsewhere."""
    return data.replace(venv_root.rstrip("/").encode(), ("/" + VENV_DIR).encode())


def pyvenv_cfg() -> str:
    # site.py only reads `home` and `include-system-site-packages`: Debian's /usr/bin/python3.11
    # runs the venv's 3.11 wheels.
    return "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n"


def freeze_without_project(freeze: str, project: str = "pixtral-operator") -> str:
    """The venv's dependency set, the cache key of its layer: the editable project is not part of it."""
    kept = []
    for line in freeze.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("-e ") or "file://" in line:
            continue
        if requirement_name(line) == project:
            continue
        kept.append(line)
    return "\n".join(sorted(kept)) + "\n"


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; @]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def router_requirements(pyproject: Mapping[str, Any]) -> list[str]:
    """The router's dependencies as pyproject writes them: the base ones and the runtime extra's
    entries that pixtral_runtime.router imports."""
    project = pyproject["project"]
    runtime = project["optional-dependencies"]["runtime"]
    return _unique([*project["dependencies"], *(r for r in runtime if requirement_name(r) in ROUTER_DISTRIBUTIONS)])


def slim_requirements(pyproject: Mapping[str, Any]) -> list[str]:
    """One slim environment for the operator and the router images: the union of their dependencies."""
    operator = pyproject["project"]["optional-dependencies"]["operator"]
    return _unique([*router_requirements(pyproject), *operator])


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def console_script(interpreter: str, entry_point: str) -> str:
    """A console-script wrapper, as pip writes one, for an entry point of pyproject's [project.scripts]."""
    module, _, function = entry_point.partition(":")
    return (
        f"#!{interpreter}\n"
        "import sys\n"
        f"from {module} import {function}\n"
        f"sys.exit({function}())\n"
    )


def code_files(pyproject: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path in the repository, path in the image) of the project's packages, as setuptools maps them
    (pixtral_operator is the folder operator/, pixtral_runtime is runtime/)."""
    setuptools = pyproject["tool"]["setuptools"]
    package_dir = setuptools.get("package-dir", {})
    package_data = setuptools.get("package-data", {})
    out = []
    for package in setuptools["packages"]:
        top, *rest = package.split(".")
        source = "/".join([package_dir.get(top, top), *rest])
        target = "/".join([CODE_DIR, top, *rest])
        for pattern in ["*.py", *package_data.get(package, [])]:
            out.append((f"{source}/{pattern}", f"{target}/{pattern}"))
    return out


def parse_image_list(text: str) -> dict[str, str]:
    """`ctr images ls` → {reference: manifest digest}. Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS."""
    images = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            images[fields[0]] = fields[2]
    return images


def repository_of(ref: str) -> str:
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref


def superseded(present: Mapping[str, str], keep: str) -> list[str]:
    """The other tags of keep's repository (older builds, whose content would otherwise fill the
    disk), with the `sha256:<image id>` names the CRI plugin adds for each imported image: an old
    build's content is collected only when no name refers to it any more."""
    repository = repository_of(keep)
    old = {ref for ref in present if ref != keep and not ref.startswith("sha256:") and repository_of(ref) == repository}
    kept_digests = {digest for ref, digest in present.items() if ref not in old and not ref.startswith("sha256:")}
    old_digests = {present[ref] for ref in old} - kept_digests
    ids = {ref for ref, digest in present.items() if ref.startswith("sha256:") and digest in old_digests}
    return sorted(old | ids)


def needs_import(present: Mapping[str, str], image: Image) -> bool:
    return present.get(image.ref) != image.manifest_digest


def parse_binary_paths(text: str) -> dict[str, str]:
    """`build-binaries.sh paths` → {"KUBE_BIN": dir, "COREDNS_BIN": dir, ...}."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def version_of(binary_dir: str) -> str:
    """The pinned version in a binary folder's name: .../kubernetes-v1.37.2 → v1.37.2."""
    match = re.search(r"-(v\d[^/]*)$", binary_dir.rstrip("/"))
    if not match:
        raise ImageError(f"no version in the folder name {binary_dir!r}")
    return match.group(1)


def python_env(path: str = BASE_PATH, *extra: str) -> tuple[str, ...]:
    return (f"PATH={path}", *PYTHON_ENV, *extra)


OPERATOR_RUN = RunConfig(f"{NONROOT_UID}:{NONROOT_UID}", ("pixtral-operator",), env=python_env())
ROUTER_RUN = RunConfig(f"{NONROOT_UID}:{NONROOT_UID}", ("pixtral-runtime",), ("router",), env=python_env())
RUNTIME_RUN = RunConfig(
    f"{NONROOT_UID}:{NONROOT_UID}", ("pixtral-runtime",),
    env=python_env(f"/{VENV_DIR}/bin:{BASE_PATH}", f"VIRTUAL_ENV=/{VENV_DIR}"),
)
COREDNS_RUN = RunConfig(f"{NONROOT_UID}:{NONROOT_UID}", ("/coredns",))
PAUSE_RUN = RunConfig(f"{PAUSE_UID}:{PAUSE_UID}", ("/pause",))
# Where the upstream images keep these binaries: the Prometheus Operator starts the config reloader
# as /bin/prometheus-config-reloader, and gives the Prometheus container arguments only.
NOBODY_UID = 65534
PROMETHEUS_RUN = RunConfig(f"{NOBODY_UID}:{NOBODY_UID}", ("/bin/prometheus",))
PROMETHEUS_OPERATOR_RUN = RunConfig(f"{NOBODY_UID}:{NOBODY_UID}", ("/bin/operator",))
CONFIG_RELOADER_RUN = RunConfig(f"{NOBODY_UID}:{NOBODY_UID}", ("/bin/prometheus-config-reloader",))


# ---------------------------------------------------------------------------------------------
# Tar writing


class _Writer:
    """A write-only file that counts (tarfile's "w" mode wants tell()) and optionally hashes what
    passes through, so a layer's digest comes with writing it instead of a second read."""

    def __init__(self, raw: IO[bytes], hashing: bool = True) -> None:
        self.raw, self.count = raw, 0
        self.hash = hashlib.sha256() if hashing else None

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count

    def flush(self) -> None:
        self.raw.flush()


def open_tar(writer: _Writer) -> tarfile.TarFile:
    # "w", not the stream mode "w|": tarfile's stream buffer re-slices large writes (quadratic).
    return tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER)  # type: ignore[arg-type]


def tar_info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 0, size: int = 0,
             mtime: int = EPOCH, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime, info.linkname = kind, mode, size, mtime, linkname
    info.uid = info.gid = uid
    info.uname = info.gname = "root" if uid == 0 else ""
    return info


def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755, uid: int = 0) -> None:
    tar.addfile(tar_info(name, tarfile.DIRTYPE, mode, uid))


def add_parents(tar: tarfile.TarFile, path: str) -> None:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        add_dir(tar, "/".join(parts[:i]))


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    tar.addfile(tar_info(name, mode=mode, size=len(data)), io.BytesIO(data))


def add_host_file(tar: tarfile.TarFile, name: str, path: Path, mode: int | None = None,
                  data: bytes | None = None) -> None:
    st = path.lstat()
    info = tar_info(name, mode=readable(st.st_mode) if mode is None else mode, mtime=int(st.st_mtime))
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    info.size = st.st_size
    with open(path, "rb") as f:
        tar.addfile(info, f)


def readable(st_mode: int) -> int:
    """Root owns the image's files; everyone may read them, only root may write."""
    mode = stat.S_IMODE(st_mode) | 0o444
    if mode & 0o100 or stat.S_ISDIR(st_mode):
        mode |= 0o111
    return mode & ~0o022


# ---------------------------------------------------------------------------------------------
# Layers (I/O)


def cached_layer(cache: Path, key: str, write: Callable[[tarfile.TarFile], None]) -> tuple[Layer, bool]:
    """The layer stored under key, written by write(tar) first if absent. Returns (layer, built)."""
    layers = cache / "layers"
    tar_path, meta_path = layers / f"{key}.tar", layers / f"{key}.json"
    if tar_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Layer(tar_path, meta["digest"], meta["size"]), False
    layers.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_name(f".{key}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as raw:
            writer = _Writer(raw)
            with open_tar(writer) as tar:
                write(tar)
        layer = Layer(tar_path, "sha256:" + writer.hash.hexdigest(), writer.count)  # type: ignore[union-attr]
        # The tar first, then its digest: a digest file always describes a complete tar.
        os.replace(tmp, tar_path)
        _write_atomic(meta_path, json.dumps({"digest": layer.digest, "size": layer.size}).encode())
        prune_layers(layers, key)
        return layer, True
    finally:
        tmp.unlink(missing_ok=True)


def prune_layers(layers: Path, new_key: str) -> None:
    """Drops the oldest cached layers of new_key's kind: a superseded venv layer is 6 GB."""
    kind = layer_kind(new_key)
    cached = [(path.stem, path.stat().st_mtime) for path in layers.glob(f"{kind}-*.tar")]
    for stale in stale_layers(cached, new_key, LAYERS_KEPT.get(kind, LAYERS_KEPT_DEFAULT)):
        for suffix in (".json", ".tar"):
            (layers / f"{stale}{suffix}").unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def base_rootfs(cache: Path, say: Callable[[str], None], packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    """The mmdebstrap tarball of Debian bookworm with `packages`, made once (about a minute) and kept."""
    key = cache_key("rootfs", BASE_SUITE, *packages)
    path = cache / "rootfs" / f"{key}.tar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{key}.{os.getpid()}.tmp.tar")
    command = ["mmdebstrap", "--variant=apt", "--include=" + ",".join(packages), BASE_SUITE, str(tmp)]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    say(f"images: base rootfs (mmdebstrap {BASE_SUITE}) {time.monotonic() - started:.1f}s, {mb(path.stat().st_size)}")
    return path


def base_layer(cache: Path, rootfs: Path) -> tuple[Layer, bool]:
    def write(tar: tarfile.TarFile) -> None:
        with tarfile.open(rootfs, "r:") as source:
            members = source.getmembers()
            kept = {base_member_name(m.name) for m in members if keep_base_member(base_member_name(m.name))}
            for member in members:
                name = base_member_name(member.name)
                if name not in kept:
                    continue
                member.name = name
                if member.islnk():
                    member.linkname = base_member_name(member.linkname)
                    if member.linkname not in kept:
                        raise ImageError(f"{rootfs}: {name} is a hard link to the dropped {member.linkname}")
                tar.addfile(member, source.extractfile(member) if member.isreg() else None)

    return cached_layer(cache, cache_key("base", rootfs.name, str(rootfs.stat().st_size)), write)


def rootfs_file(rootfs: Path, name: str) -> str:
    with tarfile.open(rootfs, "r:") as source:
        for member in source:
            if base_member_name(member.name) == name and member.isreg():
                return source.extractfile(member).read().decode()  # type: ignore[union-attr]
    raise ImageError(f"{rootfs} has no {name}")


def nonroot_layer(cache: Path, rootfs: Path, base: Layer) -> tuple[Layer, bool]:
    """The nonroot user for every Python image: torch and vLLM call getpass.getuser(), which needs a
    passwd entry for the uid, and they write caches under $HOME and /tmp. The base's own passwd and
    group files are extended (an upper layer's file replaces the lower one whole)."""

    def write(tar: tarfile.TarFile) -> None:
        add_dir(tar, "etc")
        add_bytes(tar, "etc/passwd", passwd_with_nonroot(rootfs_file(rootfs, "etc/passwd")).encode())
        add_bytes(tar, "etc/group", group_with_nonroot(rootfs_file(rootfs, "etc/group")).encode())
        add_dir(tar, "home")
        add_dir(tar, HOME_DIR, 0o755, NONROOT_UID)
        add_dir(tar, "tmp", 0o1777)

    return cached_layer(cache, cache_key("nonroot", base.digest), write)


def code_layer(cache: Path, repo_root: Path, pyproject: Mapping[str, Any]) -> tuple[Layer, bool]:
    """The project's packages, read from the checkout; keyed on their content, so an unchanged
    checkout reuses the layer and any edit gives a new one."""
    files = []
    for source_pattern, target_pattern in code_files(pyproject):
        source_dir, pattern = source_pattern.rsplit("/", 1)
        target_dir = target_pattern.rsplit("/", 1)[0]
        for path in sorted((repo_root / source_dir).glob(pattern)):
            files.append((f"{target_dir}/{path.name}", path.read_bytes()))
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())

    def write(tar: tarfile.TarFile) -> None:
        written: set[str] = set()
        for name, data in files:
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in written:
                    add_dir(tar, parent)
                    written.add(parent)
            add_bytes(tar, name, data)

    return cached_layer(cache, cache_key("code", digest.hexdigest()), write)


def uv_binary(repo_root: Path) -> str:
    candidate = repo_root / ".venv" / "bin" / "uv"
    found = str(candidate) if candidate.exists() else shutil.which("uv")
    if not found:
        raise ImageError("uv is needed to build the slim environment: run `make install` first")
    return found


def venv_freeze(repo_root: Path) -> str | None:
    venv = repo_root / ".venv"
    if not (venv / ".installed").exists():
        return None
    result = subprocess.run([uv_binary(repo_root), "pip", "freeze", "--python", str(venv / "bin" / "python")],
                            capture_output=True, text=True, check=True)
    return freeze_without_project(result.stdout)


def slim_layer(cache: Path, repo_root: Path, pyproject: Mapping[str, Any], constraints: str | None,
               say: Callable[[str], None]) -> tuple[Layer, bool]:
    """The operator's and the router's dependencies (no torch, no vLLM) in Debian's local site dir,
    where site.py also runs their .pth files, plus the console scripts and a .pth for the code.
    The project's .venv pins the versions when it exists, so the images run what the tests ran."""
    requirements = slim_requirements(pyproject)
    scripts = pyproject["project"]["scripts"]
    key = cache_key("slim", PYTHON, *requirements, constraints or "", json.dumps(scripts, sort_keys=True))

    def write(tar: tarfile.TarFile) -> None:
        staging = cache / "staging" / f"slim-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            started = time.monotonic()
            install_slim(repo_root, staging, requirements, constraints)
            say(f"images: slim environment installed {time.monotonic() - started:.1f}s")
            add_parents(tar, DIST_PACKAGES + "/x")
            add_tree(tar, staging / "target", DIST_PACKAGES, skip=lambda rel: rel == "bin" or rel.startswith("bin/"))
            add_bytes(tar, f"{DIST_PACKAGES}/pixtral-code.pth", f"/{CODE_DIR}\n".encode())
            for name, entry_point in sorted(scripts.items()):
                add_bytes(tar, f"usr/local/bin/{name}", console_script(f"/usr/bin/{PYTHON}", entry_point).encode(), 0o755)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return cached_layer(cache, key, write)


def install_slim(repo_root: Path, staging: Path, requirements: list[str], constraints: str | None) -> None:
    command = [uv_binary(repo_root), "pip", "install", "--quiet", "--target", str(staging / "target"),
               "--python", f"/usr/bin/{PYTHON}", "--compile-bytecode", *requirements]
    if constraints:
        (staging / "constraints.txt").write_text(constraints)
        command[3:3] = ["--constraint", str(staging / "constraints.txt")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"installing the slim environment failed:\n{result.stderr[-3000:]}")


def add_tree(tar: tarfile.TarFile, root: Path, target: str, skip: Callable[[str], bool] = lambda rel: False,
             rewrite: Callable[[str, Path], bytes | None] = lambda rel, path: None,
             symlink: Callable[[str], str] = lambda target: target) -> None:
    """Adds the tree under root as target/..., root-owned and world-readable, keeping mtimes (the
    .pyc files in it are checked against their sources' mtimes). Symlinks stay symlinks; hard links
    become plain files."""
    for rel, entry in walk(root):
        if skip(rel):
            continue
        name = f"{target}/{rel}"
        st = entry.stat(follow_symlinks=False)
        if entry.is_symlink():
            tar.addfile(tar_info(name, tarfile.SYMTYPE, 0o777, mtime=int(st.st_mtime),
                                 linkname=symlink(os.readlink(entry.path))))
        elif entry.is_dir(follow_symlinks=False):
            tar.addfile(tar_info(name, tarfile.DIRTYPE, readable(st.st_mode), mtime=int(st.st_mtime)))
        elif entry.is_file(follow_symlinks=False):
            add_host_file(tar, name, Path(entry.path), data=rewrite(rel, Path(entry.path)))


def walk(root: Path, prefix: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) in sorted order, parents before children, without following symlinks."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = f"{prefix}{entry.name}"
        yield rel, entry
        if entry.is_dir(follow_symlinks=False):
            yield from walk(Path(entry.path), rel + "/")


def venv_layer(cache: Path, repo_root: Path, freeze: str, pyproject: Mapping[str, Any],
               say: Callable[[str], None]) -> tuple[Layer, bool]:
    """The project's .venv (vLLM's CPU build and torch, about 6.6 GB) at /opt/pixtral/venv. Keyed on
    its installed dependency set: tarring and hashing it takes about a minute, so it is redone only
    when a dependency changes."""
    venv = repo_root / ".venv"
    venv_root = str(venv.resolve())
    if not (venv / "lib" / PYTHON / "site-packages").is_dir():
        raise ImageError(f"{venv} has no lib/{PYTHON}: the image's interpreter is Debian's {PYTHON}")
    scripts = pyproject["project"]["scripts"]
    key = cache_key("venv", PYTHON, freeze, json.dumps(scripts, sort_keys=True), "bytecode")

    def rewrite(rel: str, path: Path) -> bytes | None:
        if not rel.startswith("bin/") or path.stat().st_size > COPY_BUFFER:
            return None
        data = path.read_bytes()
        return rewrite_venv_prefix(data, venv_root) if venv_root.encode() in data else None

    def write(tar: tarfile.TarFile) -> None:
        staging = cache / "staging" / f"bytecode-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            started = time.monotonic()
            compiled = compile_bytecode(venv, staging)
            say(f"images: venv bytecode compiled {time.monotonic() - started:.1f}s ({len(compiled)} modules)")
            add_parents(tar, VENV_DIR)
            add_dir(tar, VENV_DIR)
            add_tree(tar, venv, VENV_DIR, skip=lambda rel: not venv_entry_kept(rel), rewrite=rewrite,
                     symlink=lambda target: venv_symlink_target(target, venv_root))
            add_compiled(tar, venv, staging, compiled)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        add_bytes(tar, f"{VENV_DIR}/pyvenv.cfg", pyvenv_cfg().encode())
        add_bytes(tar, f"{VENV_DIR}/lib/{PYTHON}/site-packages/pixtral-code.pth", f"/{CODE_DIR}\n".encode())
        for name, entry_point in sorted(scripts.items()):
            add_bytes(tar, f"{VENV_DIR}/bin/{name}", console_script(f"/{VENV_DIR}/bin/python", entry_point).encode(), 0o755)

    return cached_layer(cache, key, write)


def bytecode_path(rel: str) -> str:
    """Where the image's Python looks for a module's bytecode: a/b.py -> a/__pycache__/b.cpython-311.pyc."""
    folder, _, name = rel.rpartition("/")
    pyc = f"__pycache__/{name[:-3]}.{CACHE_TAG}.pyc"
    return f"{folder}/{pyc}" if folder else pyc


def bytecode_missing(rel: str, present: Callable[[str], bool]) -> bool:
    return rel.endswith(".py") and not rel.startswith("bin/") and venv_entry_kept(rel) and not present(bytecode_path(rel))


def compile_bytecode(venv: Path, staging: Path) -> list[str]:
    """Bytecode for every module of the venv that has none (uv does not compile, and the image's
    user may not write beside root's files): `import vllm, torch` took 21 s without it, 7 s with.
    Timestamp .pyc files, valid because the layer keeps the sources' mtimes. Returns the relative
    paths of the .pyc files written under staging."""
    if sys.version_info[:2] != (3, 11):
        return []  # bytecode is per minor version; without it the image still runs, only slower
    jobs = [
        (str(venv / rel), str(staging / bytecode_path(rel)), f"/{VENV_DIR}/{rel}")
        for rel, entry in walk(venv)
        if entry.is_file(follow_symlinks=False) and bytecode_missing(rel, lambda pyc: (venv / pyc).exists())
    ]
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = list(pool.map(_compile, jobs, chunksize=64))
    return [os.path.relpath(target, staging) for target in done if target]


def _compile(job: tuple[str, str, str]) -> str | None:
    source, target, shown = job
    try:
        py_compile.compile(source, cfile=target, dfile=shown, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    except (py_compile.PyCompileError, SyntaxError, ValueError, OSError):
        return None  # templates and Python 2 leftovers some packages ship: never imported
    return target


def add_compiled(tar: tarfile.TarFile, venv: Path, staging: Path, compiled: list[str]) -> None:
    folders = set()
    for rel in sorted(compiled):
        folder = rel.rpartition("/")[0]
        if folder not in folders and not (venv / folder).is_dir():
            add_dir(tar, f"{VENV_DIR}/{folder}")
        folders.add(folder)
        add_host_file(tar, f"{VENV_DIR}/{rel}", staging / rel, mode=0o644)


def binary_layer(cache: Path, name: str, binary: Path, path: str | None = None) -> tuple[Layer, bool]:
    """A layer holding one static binary at /name, or at /path (coredns, pause, the monitoring
    stack): no base image needed."""
    if not binary.is_file():
        raise ImageError(f"{binary} is missing: build it with `bash e2e/tools/build-binaries.sh`")
    st = binary.stat()
    path = path or name
    key = cache_key(name, path, str(binary.resolve()), str(st.st_size), str(st.st_mtime_ns))

    def write(tar: tarfile.TarFile) -> None:
        add_parents(tar, path)
        add_host_file(tar, path, binary, mode=0o755)

    return cached_layer(cache, key, write)


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class _Timer:
    say: Callable[[str], None]

    def layer(self, what: str, build: Callable[[], tuple[Layer, bool]]) -> Layer:
        started = time.monotonic()
        layer, built = build()
        state = f"written + hashed {time.monotonic() - started:.1f}s" if built else "cached"
        self.say(f"images: layer {what}: {state}, {mb(layer.size)} {layer.digest[7:19]}")
        return layer


def build_images(*, repo_root: Path = REPO_ROOT, cache: Path | None = None, runtime: bool = True,
                 binaries: Mapping[str, str] | None = None, say: Callable[[str], None] = print) -> dict[str, Image]:
    """Every image of the local cluster, built from cached layers where their inputs are unchanged.
    runtime=False leaves out the vLLM runtime image (which needs the project's .venv); binaries is
    the output of `build-binaries.sh paths` (read from the script when not given)."""
    cache = cache or cache_root(os.environ, Path.home())
    images = python_images(cache, repo_root, runtime=runtime, say=say)
    binaries = binaries if binaries is not None else binary_paths(repo_root)
    kube_bin, coredns_bin = binaries["KUBE_BIN"], binaries["COREDNS_BIN"]
    images["coredns"] = coredns_image(cache, Path(coredns_bin) / "coredns", version_of(coredns_bin), say=say)
    images["pause"] = pause_image(cache, Path(kube_bin) / "pause", version_of(kube_bin), say=say)
    images.update(monitoring_images(cache, binaries, say=say))
    return images


def python_images(cache: Path, repo_root: Path, *, runtime: bool = True,
                  say: Callable[[str], None] = print) -> dict[str, Image]:
    """operator and router (slim environment) and runtime-cpu (the project's .venv)."""
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    timer = _Timer(say)
    rootfs = base_rootfs(cache, say)
    base = timer.layer("base", lambda: base_layer(cache, rootfs))
    nonroot = timer.layer("nonroot", lambda: nonroot_layer(cache, rootfs, base))
    code = timer.layer("code", lambda: code_layer(cache, repo_root, pyproject))
    freeze = venv_freeze(repo_root)
    slim = timer.layer("slim env", lambda: slim_layer(cache, repo_root, pyproject, freeze, say))
    images = {
        "operator": assemble(OPERATOR_REPO, [base, nonroot, slim, code], OPERATOR_RUN),
        "router": assemble(ROUTER_REPO, [base, nonroot, slim, code], ROUTER_RUN),
    }
    if runtime:
        if freeze is None:
            raise ImageError(f"{repo_root / '.venv'} is not installed (no .installed): run `make install`")
        venv = timer.layer("venv", lambda: venv_layer(cache, repo_root, freeze, pyproject, say))
        engine_rootfs = base_rootfs(cache, say, RUNTIME_PACKAGES)
        engine_base = timer.layer("engine base", lambda: base_layer(cache, engine_rootfs))
        engine_nonroot = timer.layer("engine nonroot", lambda: nonroot_layer(cache, engine_rootfs, engine_base))
        images["runtime-cpu"] = assemble(RUNTIME_CPU_REPO, [engine_base, engine_nonroot, venv, code], RUNTIME_RUN)
    return images


def coredns_image(cache: Path, binary: Path, version: str, *, say: Callable[[str], None] = print) -> Image:
    """localhost/coredns:<version>: the static coredns binary alone, run as nonroot."""
    layer = _Timer(say).layer("coredns", lambda: binary_layer(cache, "coredns", binary))
    return assemble(COREDNS_REPO, [layer], COREDNS_RUN, tag=version)


def pause_image(cache: Path, binary: Path, k8s_version: str, *, say: Callable[[str], None] = print) -> Image:
    """localhost/pause:<Kubernetes version>: the sandbox image, the static pause program alone."""
    layer = _Timer(say).layer("pause", lambda: binary_layer(cache, "pause", binary))
    return assemble(PAUSE_REPO, [layer], PAUSE_RUN, tag=k8s_version)


def prometheus_release(prometheus_bin: str) -> str:
    """The Prometheus release of a build (v3.16.0), which build-binaries.sh writes beside it."""
    release = Path(prometheus_bin) / "release"
    if not release.is_file():
        raise ImageError(f"{release} is missing: build Prometheus with `bash e2e/tools/build-binaries.sh prometheus`")
    return release.read_text().strip()


def monitoring_images(cache: Path, binaries: Mapping[str, str], *,
                      say: Callable[[str], None] = print) -> dict[str, Image]:
    """Prometheus, the Prometheus Operator and its config reloader, tagged with their releases."""
    timer = _Timer(say)
    prometheus_bin, operator_bin = Path(binaries["PROMETHEUS_BIN"]), Path(binaries["PROMETHEUS_OPERATOR_BIN"])
    operator_version = version_of(str(operator_bin))

    def one(name: str, binary: Path, repository: str, run: RunConfig, tag: str) -> Image:
        layer = timer.layer(name, lambda: binary_layer(cache, name, binary, f"bin/{binary.name}"))
        return assemble(repository, [layer], run, tag=tag)

    return {
        "prometheus": one("prometheus", prometheus_bin / "prometheus", PROMETHEUS_REPO, PROMETHEUS_RUN,
                          prometheus_release(str(prometheus_bin))),
        "prometheus-operator": one("prometheus-operator", operator_bin / "operator", PROMETHEUS_OPERATOR_REPO,
                                   PROMETHEUS_OPERATOR_RUN, operator_version),
        "prometheus-config-reloader": one("prometheus-config-reloader", operator_bin / "prometheus-config-reloader",
                                          CONFIG_RELOADER_REPO, CONFIG_RELOADER_RUN, operator_version),
    }


def binary_paths(repo_root: Path) -> dict[str, str]:
    script = repo_root / "e2e" / "tools" / "build-binaries.sh"
    result = subprocess.run(["bash", str(script), "paths"], capture_output=True, text=True, check=True)
    return parse_binary_paths(result.stdout)


def pause_ref(k8s_version: str) -> str:
    """The sandbox image containerd's CRI config names (sandbox_image)."""
    return f"{PAUSE_REPO}:{k8s_version}"


def coredns_ref(coredns_version: str) -> str:
    return f"{COREDNS_REPO}:{coredns_version}"


def write_layout(image: Image, out: IO[bytes], skip: Iterable[str] = ()) -> None:
    """The image as an OCI image layout in one tar stream; layers whose digests are in skip are left
    out (containerd already holds them and only needs the manifest to name them)."""
    skip = set(skip)
    writer = _Writer(out, hashing=False)
    with open_tar(writer) as tar:
        add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        add_bytes(tar, "index.json", canonical_json(image_index(image)))
        add_dir(tar, "blobs")
        add_dir(tar, "blobs/sha256")
        add_bytes(tar, f"blobs/sha256/{image.config_digest[7:]}", image.config)
        add_bytes(tar, f"blobs/sha256/{image.manifest_digest[7:]}", image.manifest)
        sent = set()
        for layer in image.layers:
            if layer.digest in skip or layer.digest in sent:
                continue
            sent.add(layer.digest)
            info = tar_info(f"blobs/sha256/{layer.digest[7:]}", size=layer.size)
            with open(layer.path, "rb") as f:
                tar.addfile(info, f)


# ---------------------------------------------------------------------------------------------
# containerd (I/O)


def ctr(socket: str, *args: str) -> list[str]:
    return ["ctr", "--address", socket, "-n", NAMESPACE, *args]


def _run_ctr(socket: str, *args: str) -> str:
    result = subprocess.run(ctr(socket, *args), capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def present_images(socket: str) -> dict[str, str]:
    return parse_image_list(_run_ctr(socket, "images", "ls"))


def present_blobs(socket: str) -> set[str]:
    return set(_run_ctr(socket, "content", "ls", "-q").split())


def import_image(socket: str, image: Image, *, say: Callable[[str], None] = print) -> bool:
    """Imports image unless containerd has it already (same name, same manifest). Blobs containerd
    holds are not sent again; if that import fails (content collected meanwhile) all are sent."""
    if not needs_import(present_images(socket), image):
        say(f"images: {image.ref} already in containerd")
        return False
    started = time.monotonic()
    try:
        sent = _import(socket, image, skip=present_blobs(socket))
    except ImageError:
        sent = _import(socket, image, skip=())
    say(f"images: import {image.ref}: {time.monotonic() - started:.1f}s, {mb(sent)} sent")
    return True


def _import(socket: str, image: Image, skip: Iterable[str]) -> int:
    # ctr's output goes to files, not pipes: a full pipe would stall it while we are still writing.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(ctr(socket, "images", "import", "-"), stdin=subprocess.PIPE,
                                   stdout=output, stderr=subprocess.STDOUT)
        counter = _Writer(process.stdin, hashing=False)  # type: ignore[arg-type]
        try:
            write_layout(image, counter, skip)  # type: ignore[arg-type]
        except BrokenPipeError:
            pass  # ctr gave up; its exit status and output say why
        finally:
            try:
                process.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
        process.wait()
        if process.returncode != 0:
            output.seek(0)
            raise ImageError(f"ctr images import {image.ref} failed: {output.read().decode().strip()[-2000:]}")
    return counter.count


def remove_superseded(socket: str, image: Image, *, say: Callable[[str], None] = print) -> list[str]:
    """Removes the repository's other tags. `--sync` waits for containerd's garbage collection, which
    then drops the blobs and snapshots no image (or container) uses any more."""
    old = superseded(present_images(socket), image.ref)
    if old:
        before = len(present_blobs(socket))
        _run_ctr(socket, "images", "rm", "--sync", *old)
        say(f"images: removed {', '.join(old)} (content blobs {before} -> {len(present_blobs(socket))})")
    return old


def ensure_images(ctr_socket: str, *, say: Callable[[str], None] = print, repo_root: Path = REPO_ROOT,
                  runtime: bool = True, binaries: Mapping[str, str] | None = None) -> dict[str, str]:
    """Builds what is missing, imports it into containerd's k8s.io namespace and removes superseded
    tags. Returns {name: reference} for operator, router, runtime-cpu (unless runtime=False),
    coredns and pause. binaries: `build-binaries.sh paths` as a mapping (read from the script if None)."""
    started = time.monotonic()
    images = build_images(repo_root=repo_root, runtime=runtime, binaries=binaries, say=say)
    for image in images.values():
        import_image(ctr_socket, image, say=say)
        remove_superseded(ctr_socket, image, say=say)
    say(f"images: ready in {time.monotonic() - started:.1f}s")
    return {name: image.ref for name, image in images.items()}
