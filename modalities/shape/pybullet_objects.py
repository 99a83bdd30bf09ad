"""The objects that ship with pybullet (``pybullet_data``) as a folder of closed meshes.

``pip install pybullet`` (a 103 MB binary wheel) brings ``pybullet_data`` with 1,117 OBJ files:
1,000 procedurally generated objects (``random_urdfs/NNN/NNN.obj``; their URDFs differ only in
number and colour, so they form no families) and 117 others: robot links, a few real objects
(bunny, duck, teddy ...) and scenes (ground planes, terrain, a stadium, a monastery), which are
never read. :func:`write_pybullet_folder` writes the closed solids as a folder
:class:`modalities.shape.MeshFolder` reads, one class per family (:data:`FAMILIES`):

- ``random``: the procedural objects (956 of 1,000 are written);
- ``objects``: the stand-alone objects (17: bunny, duck, soccer ball, torus, toys, trays ...);
- ``robot_parts``: the links of the robot models (43: kuka_iiwa, franka_panda, laikago ...).

Most of these files are convex decompositions: several closed convex parts in one file, which
overlap. Concatenated, about 2 % of the points around a procedural object get the wrong sign;
:func:`modalities.shape.load_mesh` fuses the parts into their union, and the fused mesh is
what is written. A file ``load_mesh`` refuses (open or non-manifold surfaces), an object whose
written fused mesh it refuses when read back (zero-area faces, parts meeting at an edge) and
an object identical to one already written are left out, each counted and logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from .mesh import MeshError, load_mesh

log = logging.getLogger(__name__)

__all__ = [
    "FAMILIES",
    "ROBOT_FOLDERS",
    "SCENES",
    "pybullet_data_dir",
    "pybullet_sources",
    "write_pybullet_folder",
]

#: The classes of the written folder (module docstring).
FAMILIES: tuple[str, ...] = ("objects", "random", "robot_parts")

#: Top-level folders of ``pybullet_data`` that hold the links of a robot model.
ROBOT_FOLDERS = frozenset(
    {
        "a1",
        "aliengo",
        "franka_panda",
        "kuka_iiwa",
        "laikago",
        "mini_cheetah",
        "quadruped",
        "racecar",
        "xarm",
    }
)

#: Top-level entries of ``pybullet_data`` that are environments, not objects: never read.
SCENES = frozenset(
    {
        "cloth_z_up.obj",
        "plane.obj",
        "plane100.obj",
        "plane_transparent.obj",
        "roboschool",
        "samurai_monastry.obj",
        "terrain.obj",
    }
)

#: Folders left out of written names (``kuka_iiwa/meshes/link_0`` -> ``kuka_iiwa-link_0``).
UNNAMED_FOLDERS = frozenset({"random_urdfs", "meshes", "xarm_description", "xarm6"})


def pybullet_data_dir() -> Path:
    """The ``pybullet_data`` folder of the installed pybullet, or a clear error how to get it."""
    try:
        import pybullet_data
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'pybullet is not installed: `pip install pybullet` (or `pip install -e ".[shape]"`) '
            "brings its pybullet_data objects"
        ) from None
    return Path(pybullet_data.getDataPath())


def family_of(relative: Path) -> str | None:
    """The family (:data:`FAMILIES`) of an OBJ file from its path inside ``pybullet_data``, or
    ``None`` for a scene (:data:`SCENES`)."""
    top = relative.parts[0]
    if top in SCENES:
        return None
    if top == "random_urdfs":
        return "random"
    return "robot_parts" if top in ROBOT_FOLDERS else "objects"


def pybullet_sources(data_dir: Path | None = None) -> dict[str, list[Path]]:
    """Every OBJ file of ``pybullet_data`` but the scenes, by family, each list sorted by path."""
    data_dir = data_dir or pybullet_data_dir()
    sources: dict[str, list[Path]] = {family: [] for family in FAMILIES}
    for path in sorted(data_dir.rglob("*.obj")):
        family = family_of(path.relative_to(data_dir))
        if family is not None:
            sources[family].append(path)
    return sources


def output_name(relative: Path) -> str:
    """A flat file name for a source path: its folders joined by ``-``, repeats dropped.

    ``random_urdfs/007/007.obj`` -> ``007.obj``, ``toys/cube.obj`` -> ``toys-cube.obj``.
    """
    parts = [part for part in relative.with_suffix("").parts if part not in UNNAMED_FOLDERS]
    kept = [part for index, part in enumerate(parts) if index == 0 or part != parts[index - 1]]
    return "-".join(kept) + ".obj"


def write_object(source: Path, target: Path) -> str:
    """Load ``source`` (its parts fused), write it to ``target`` and check it loads closed.

    Returns the SHA-256 of the written file. Raises :class:`MeshError` (naming the file) when
    ``source`` or the written mesh is not a closed solid; nothing is left at ``target`` then.
    """
    load_mesh(source).export(target)
    try:
        load_mesh(target)
    except MeshError as error:
        target.unlink()
        raise MeshError(f"{source}: its fused parts are not closed ({error})") from None
    return hashlib.sha256(target.read_bytes()).hexdigest()


def write_family(
    sources: Sequence[Path], data_dir: Path, folder: Path, max_objects: int | None
) -> tuple[int, list[str]]:
    """Write the closed solids of ``sources`` (in order) into ``folder``, at most ``max_objects``.

    Returns how many were written and why each other source was left out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    left_out: list[str] = []
    for source in sources:
        if max_objects is not None and len(written) >= max_objects:
            break
        target = folder / output_name(source.relative_to(data_dir))
        try:
            digest = write_object(source, target)
        except MeshError as error:
            left_out.append(str(error))
            continue
        if digest in written:
            target.unlink()
            left_out.append(f"{source}: the same mesh as one already written")
            continue
        written.add(digest)
    return len(written), left_out


def write_pybullet_folder(
    root: str | Path,
    max_objects: int | None = None,
    families: Sequence[str] = FAMILIES,
    data_dir: str | Path | None = None,
) -> Path:
    """Write pybullet's closed objects as ``root/<family>/<name>.obj`` (module docstring).

    Args:
        root: the folder to write; each family's sub-folder must not yet hold OBJ files, so a
            folder never mixes two calls' objects.
        max_objects: at most this many objects per family, the first by source path (all if
            ``None``); a deterministic subset for quick runs.
        families: which of :data:`FAMILIES` to write.
        data_dir: the ``pybullet_data`` folder (default: the installed pybullet's).

    Sources are read in sorted order and every step is deterministic, so the same arguments
    write the same files. Returns ``root``.
    """
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"`families` must be a non-empty subset of {FAMILIES}, got {families}")
    data_dir = Path(data_dir) if data_dir is not None else pybullet_data_dir()
    sources = pybullet_sources(data_dir)
    root = Path(root)
    for family in families:
        folder = root / family
        if folder.is_dir() and any(folder.glob("*.obj")):
            raise FileExistsError(f"{folder}: already holds meshes; write into a new folder")
    for family in families:
        count, left_out = write_family(sources[family], data_dir, root / family, max_objects)
        for reason in left_out:
            log.info("left out %s", reason)
        log.info("pybullet %s: wrote %d objects, left out %d", family, count, len(left_out))
    return root
