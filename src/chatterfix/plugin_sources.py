"""Where plugins come from: built-ins, the ``chatterfix`` entry points, a folder, code.

Each source yields :class:`Candidate` objects. A candidate knows its name before anything is
imported, so a disabled plugin costs nothing, and it can import its code afresh for a reload.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from chatterfix.manifest import (
    ManifestError,
    PluginManifest,
    load_manifest_file,
    structure_manifest,
)

ENTRY_POINT_GROUP = "chatterfix"
OWN_DISTRIBUTION = "chatterfix"
MANIFEST_FILE = "plugin.json"
MANIFEST_ATTRIBUTE = "PLUGIN_MANIFEST"
FOLDER_PACKAGE = "chatterfix_local_plugins"


@attrs.frozen
class Loaded:
    """What importing a candidate produced: the plugin object (None for a remote app)."""

    plugin: object | None
    manifest: PluginManifest


@attrs.frozen
class Candidate:
    name: str
    origin: str  # "builtin" | "entrypoint" | "folder" | "code" | "api"
    location: str
    load: Callable[[], Loaded] = attrs.field(repr=False, eq=False)
    # Modules to drop from sys.modules before importing again on reload: the plugin's whole
    # package, so edits to its helper modules are picked up too ...
    module_prefixes: tuple[str, ...] = ()
    # ... or just its own module, when another plugin lives in the same package.
    own_module: str = ""


def _manifest_near(plugin: object) -> Path | None:
    """The plugin.json of a package plugin, or of a module inside a package."""
    file = getattr(plugin, "__file__", None)
    if not isinstance(file, str):
        return None
    folder = Path(file).parent
    is_package = hasattr(plugin, "__path__")
    if not is_package and not (folder / "__init__.py").exists():
        return None  # a top-level module: a plugin.json beside it belongs to something else
    candidate = folder / MANIFEST_FILE
    return candidate if candidate.is_file() else None


def manifest_for(
    plugin: object, fallback_name: str, defaults: dict[str, Any], source: str
) -> PluginManifest:
    """The manifest of a loaded plugin object: attribute, plugin.json, or defaults."""
    declared = getattr(plugin, MANIFEST_ATTRIBUTE, None)
    if isinstance(declared, PluginManifest):
        return declared
    if declared is not None:
        if not isinstance(declared, Mapping):
            raise ManifestError(
                source,
                MANIFEST_ATTRIBUTE,
                f"must be a dict or a PluginManifest, got {type(declared).__name__}",
            )
        return structure_manifest({**defaults, "name": fallback_name, **declared}, source)
    path = _manifest_near(plugin)
    if path is not None:
        data = _read_json(path)
        return structure_manifest({**defaults, "name": fallback_name, **data}, str(path))
    return structure_manifest({**defaults, "name": fallback_name}, source)


def _read_json(path: Path) -> Any:
    # Named errors come from load_manifest_file; reuse it for the parsing diagnostics.
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        load_manifest_file(path)
        raise


def _distribution_defaults(meta: Any) -> dict[str, Any]:
    """Manifest defaults from a distribution's (already parsed) metadata."""
    if meta is None:
        return {}
    author = meta["Author"] or (meta["Author-email"] or "").split("<")[0].strip()
    defaults: dict[str, Any] = {"version": meta["Version"]}
    if meta["Summary"]:
        defaults["description"] = meta["Summary"]
    if author:
        defaults["author"] = author.strip('"')
    return defaults


def _check_name(manifest: PluginManifest, expected: str, source: str) -> PluginManifest:
    if manifest.name != expected:
        raise ManifestError(
            source, "name", f"is {manifest.name!r} but the plugin is registered as {expected!r}"
        )
    return manifest


def _top_package(value: str) -> str:
    return value.split(":")[0].split(".")[0]


def entry_point_candidates(*, builtins: bool, third_party: bool) -> Iterator[Candidate]:
    """Candidates from the ``chatterfix`` entry-point group, built-ins first."""
    own: list[Candidate] = []
    others: list[Candidate] = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        # Each read of Distribution.metadata parses the METADATA file again: read it once.
        meta = entry_point.dist.metadata if entry_point.dist else None
        dist_name = (meta["Name"] if meta else "") or ""
        is_builtin = dist_name.lower().replace("_", "-") == OWN_DISTRIBUTION
        if (is_builtin and not builtins) or (not is_builtin and not third_party):
            continue
        location = f"{dist_name} {meta['Version'] if meta else ''}".strip()
        target = own if is_builtin else others
        target.append(
            Candidate(
                name=entry_point.name,
                origin="builtin" if is_builtin else "entrypoint",
                location=f"{location} ({entry_point.value})",
                load=_entry_point_loader(entry_point, _distribution_defaults(meta)),
                module_prefixes=(_top_package(entry_point.value),),
                own_module=entry_point.module,
            )
        )
    yield from own
    yield from others


def _current_entry_point(
    original: importlib.metadata.EntryPoint,
) -> importlib.metadata.EntryPoint:
    """The entry point as installed now: a reload after ``pip install -U`` sees the upgrade."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=original.name):
        return entry_point
    return original


def _entry_point_loader(
    original: importlib.metadata.EntryPoint, defaults: dict[str, Any]
) -> Callable[[], Loaded]:
    first = [True]

    def load() -> Loaded:
        entry_point, dist_defaults = original, defaults
        if not first[0]:
            entry_point = _current_entry_point(original)
            dist = entry_point.dist
            dist_defaults = _distribution_defaults(dist.metadata if dist else None)
        first[0] = False
        plugin = entry_point.load()
        source = f"entry point {entry_point.name} = {entry_point.value}"
        manifest = manifest_for(plugin, entry_point.name, dist_defaults, source)
        return Loaded(plugin, _check_name(manifest, entry_point.name, source))

    return load


def folder_candidates(folder: Path) -> Iterator[Candidate | ManifestError]:
    """One candidate per sub-folder holding a ``plugin.json``; bad manifests as errors."""
    if not folder.is_dir():
        yield ManifestError(str(folder), "(folder)", "plugins folder does not exist")
        return
    for child in sorted(folder.iterdir()):
        manifest_path = child / MANIFEST_FILE
        if not manifest_path.is_file():
            continue
        try:
            manifest = load_manifest_file(manifest_path)
        except ManifestError as exc:
            yield exc
            continue
        yield Candidate(
            name=manifest.name,
            origin="folder",
            location=str(child),
            load=_folder_loader(child, manifest_path),
            module_prefixes=(f"{FOLDER_PACKAGE}.{manifest.name}",),
        )


def _folder_code(folder: Path, manifest: PluginManifest) -> tuple[str, Path] | None:
    """How to import a folder plugin: ('package', root) or ('file', path), if any code."""
    if manifest.module:
        target = folder / manifest.module
        if target.with_suffix(".py").is_file():
            return "file", target.with_suffix(".py")
        if (target / "__init__.py").is_file():
            return "package", target
        return "missing", target
    for root in (folder, folder / "src"):
        if (root / manifest.name / "__init__.py").is_file():
            return "package", root / manifest.name
    if (folder / "main.py").is_file():
        return "file", folder / "main.py"
    if (folder / "__init__.py").is_file():
        return "file", folder / "__init__.py"
    return None


def _folder_loader(folder: Path, manifest_path: Path) -> Callable[[], Loaded]:
    def load() -> Loaded:
        manifest = load_manifest_file(manifest_path)  # read again: reload picks up edits
        code = _folder_code(folder, manifest)
        if code is None:
            if manifest.is_remote_capable:
                return Loaded(None, manifest)
            raise ManifestError(
                str(manifest_path),
                "module",
                f"no code found in {folder}: expected main.py, __init__.py or a package named "
                f"{manifest.name!r} (or set 'url'/'port' for a remote app)",
            )
        kind, path = code
        if kind == "missing":
            raise ManifestError(str(manifest_path), "module", f"{path} does not exist")
        return Loaded(_import_folder_code(manifest.name, folder, kind, path), manifest)

    return load


def _import_folder_code(name: str, folder: Path, kind: str, path: Path) -> types.ModuleType:
    """Import a folder plugin below ``chatterfix_local_plugins.<name>``.

    Nothing is added to ``sys.path``: a plugin called ``calendar`` or holding a stray
    ``secrets.py`` cannot shadow the standard library, and two plugins' ``main.py`` never
    collide. Relative imports inside the plugin work as usual.
    """
    if FOLDER_PACKAGE not in sys.modules:
        root = types.ModuleType(FOLDER_PACKAGE)
        root.__path__ = []
        sys.modules[FOLDER_PACKAGE] = root
    package_name = f"{FOLDER_PACKAGE}.{name}"
    if kind == "package":
        return _exec_module(package_name, path / "__init__.py", package_dir=path)
    if path.name == "__init__.py":
        return _exec_module(package_name, path, package_dir=folder)
    package = types.ModuleType(package_name)
    package.__path__ = [str(folder)]
    sys.modules[package_name] = package
    return _exec_module(f"{package_name}.{path.stem}", path, package_dir=None)


def _exec_module(module_name: str, path: Path, package_dir: Path | None) -> types.ModuleType:
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(
        module_name, path, submodule_search_locations=locations
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def code_candidates(objects: Iterable[object]) -> Iterator[Candidate | ManifestError]:
    """Candidates for plugin objects passed as ``Platform(plugins=[...])``."""
    for plugin in objects:
        name = _code_plugin_name(plugin)
        source = f"plugin object {getattr(plugin, '__name__', type(plugin).__name__)}"
        try:
            manifest = manifest_for(plugin, name, {}, source)
        except ManifestError as exc:
            yield exc
            continue
        module_name = getattr(plugin, "__name__", None)
        is_module = isinstance(plugin, types.ModuleType)
        yield Candidate(
            name=manifest.name,
            origin="code",
            location=module_name if is_module and module_name else repr(plugin),
            load=_code_loader(plugin, manifest),
            module_prefixes=(module_name,) if is_module and module_name else (),
        )


def _code_plugin_name(plugin: object) -> str:
    declared = getattr(plugin, MANIFEST_ATTRIBUTE, None)
    if isinstance(declared, PluginManifest):
        return declared.name
    if isinstance(declared, dict) and isinstance(declared.get("name"), str):
        return str(declared["name"])
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__.rsplit(".", 1)[-1]
    if isinstance(plugin, type):
        return plugin.__name__.lower()
    return type(plugin).__name__.lower()


def _code_loader(plugin: object, manifest: PluginManifest) -> Callable[[], Loaded]:
    first = [True]

    def load() -> Loaded:
        if first[0] or not isinstance(plugin, types.ModuleType):
            first[0] = False
            return Loaded(plugin, manifest)
        module = importlib.import_module(plugin.__name__)
        return Loaded(module, manifest_for(module, manifest.name, {}, plugin.__name__))

    return load


def remote_candidate(manifest: PluginManifest, origin: str = "api") -> Candidate:
    """A manifest-only app registered at runtime (no code to import)."""
    return Candidate(
        name=manifest.name,
        origin=origin,
        location=manifest.url or f"port {manifest.port}",
        load=lambda: Loaded(None, manifest),
    )
