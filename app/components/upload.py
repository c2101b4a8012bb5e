"""Safe extraction of an uploaded dataset zip (images + votes.csv) into the workspace.

Refused, with every offending member named at once (nothing is extracted then):
- members that would land outside the target folder: absolute paths, drive letters, `..` components (zip-slip);
- symbolic links (and other special files);
- files that are neither images (the engine's IMAGE_EXTENSIONS, DICOM included) nor votes.csv / README / CSV sidecars;
- archives whose unpacked size would not fit on the disk.
macOS packaging clutter (`__MACOSX/`, `.DS_Store`) is skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

ALLOWED_NAMES = {"votes.csv", "ground_truth.csv", "labels.csv"}  # tabular sidecars a dataset may carry
ALLOWED_PREFIXES = ("readme",)  # README, README.md, readme.txt
IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}


def _image_extensions() -> set[str]:
    from engine.data.images import IMAGE_EXTENSIONS

    return {e.lower() for e in IMAGE_EXTENSIONS}


def _is_dicom_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """An extension-less member carrying the DICOM 'DICM' marker at byte 128 (common in PACS exports)."""
    try:
        with zf.open(info) as fh:
            head = fh.read(132)
    except Exception:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _member_problem(info: zipfile.ZipInfo, image_ext: set[str], zf: zipfile.ZipFile | None = None) -> str | None:
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link; links are not extracted"
    kind = stat.S_IFMT(mode)  # 0 when the archiver stored no Unix mode (e.g. zips made on Windows)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "is a special file (device, pipe, ...)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path and would be written outside the dataset folder"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "contains '..' and would be written outside the dataset folder"
    if info.is_dir():
        return None
    base = parts[-1] if parts else ""
    suffix = PurePosixPath(base).suffix.lower()
    if base.lower() in ALLOWED_NAMES or base.lower().startswith(ALLOWED_PREFIXES) or suffix in image_ext:
        return None
    if suffix == "" and zf is not None and _is_dicom_member(zf, info):
        return None
    return f"is not an image ({', '.join(sorted(image_ext))}), votes.csv or README"


def _ignored(info: zipfile.ZipInfo) -> bool:
    return any(part in IGNORED_PARTS for part in PurePosixPath(info.filename.replace("\\", "/")).parts)


def check_zip(zf: zipfile.ZipFile, *, label: str, free_bytes: int | None = None) -> list:
    """Every reason to refuse this archive, as engine Problems (empty = safe to extract)."""
    from engine.errors import Problem

    image_ext = _image_extensions()
    problems = []
    members = [i for i in zf.infolist() if not _ignored(i)]
    for info in members:
        reason = _member_problem(info, image_ext, zf)
        if reason:
            problems.append(Problem(label, f"'{info.filename}' {reason}", "remove it from the zip and upload again"))
    files = [i for i in members if not i.is_dir()]
    if not any(PurePosixPath(i.filename).name == "votes.csv" for i in files):
        problems.append(Problem(label, "no votes.csv in the zip", "put votes.csv next to the images, then zip the folder"))
    total = sum(i.file_size for i in files)
    if free_bytes is not None and total > free_bytes:
        problems.append(Problem(label, f"unpacks to {total / 1e9:.1f} GB but only {free_bytes / 1e9:.1f} GB are free",
                                "free disk space or open the folder by its path instead"))
    return problems


def dataset_root(folder: Path) -> Path:
    """The folder holding votes.csv (the shallowest one), so a zip of the folder or of its contents both work."""
    found = sorted(folder.rglob("votes.csv"), key=lambda p: (len(p.parts), str(p)))
    return found[0].parent if found else folder


def extract_dataset_zip(data: bytes, name: str, datasets_dir: Path) -> Path:
    """Check, then extract an uploaded zip into datasets_dir/<name>-<hash>/; returns the dataset folder.

    Raises engine.errors.InputError listing every refused member. Re-uploading the same bytes reuses the folder.
    """
    from engine.errors import InputError, Problem

    label = name or "upload.zip"
    digest = hashlib.sha256(data).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(label).stem)[:40] or "dataset"
    target = Path(datasets_dir) / f"{stem}-{digest}"
    if (target / ".complete").exists():
        return dataset_root(target)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InputError(Problem(label, "is not a zip archive (or it is damaged)", "upload a .zip file")) from None
    with zf:
        datasets_dir.mkdir(parents=True, exist_ok=True)
        problems = check_zip(zf, label=label, free_bytes=shutil.disk_usage(datasets_dir).free)
        if problems:
            raise InputError(problems)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        root = tmp.resolve()
        for info in zf.infolist():
            if _ignored(info) or info.is_dir():
                continue
            dest = (root / info.filename.replace("\\", "/")).resolve()
            if not dest.is_relative_to(root):  # belt and braces after check_zip
                raise InputError(Problem(label, f"'{info.filename}' would be written outside the dataset folder"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
        (tmp / ".complete").write_text(label, encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return dataset_root(target)
