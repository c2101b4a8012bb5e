"""Safe extraction of an uploaded dataset zip (images + votes.csv) into the workspace.

Refused, with every offending member named at once (nothing is extracted then):
- members that would land outside the target folder: absolute paths, drive letters, `..` components (zip-slip);
- symbolic links (and other special files);
- files that are neither images (the engine's IMAGE_EXTENSIONS, DICOM included) nor votes.csv / README / CSV sidecars;
- a name that is both a file and a folder (`images` and `images/a.png`), or a file listed twice;
- zip bombs: a member that unpacks to more than `MAX_RATIO` times its compressed size (above 1 MiB), or an
  archive that unpacks to more than `MAX_UNPACKED_BYTES` in all (or more than the disk has free).
The sizes checked are the archive's own headers; `zipfile` never returns more bytes than a member's header says
(a header that lies fails its CRC check), and such a damaged member is a clear error: nothing is left behind.
macOS packaging clutter (`__MACOSX/`, `.DS_Store`) is skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

ALLOWED_NAMES = {"votes.csv", "ground_truth.csv", "labels.csv"}  # tabular sidecars a dataset may carry
ALLOWED_PREFIXES = ("readme",)  # README, README.md, readme.txt
IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}
MAX_UNPACKED_BYTES = 8 * 2**30  # 8 GiB: 16x the largest upload (maxUploadSize 500 MB); a bigger dataset opens by path
MAX_RATIO = 100  # images are compressed already (PNG/JPEG ~1x, raw DICOM/TIFF a few x); 1 GiB of zeros is ~1000x
RATIO_FROM_BYTES = 2**20  # small members (a CSV, a blank image) may compress well without being a bomb


def _image_extensions() -> set[str]:
    from engine.data.images import IMAGE_EXTENSIONS

    return {e.lower() for e in IMAGE_EXTENSIONS}


def _is_dicom_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """An extension-less member carrying the DICOM 'DICM' marker at byte 128 (common in PACS exports)."""
    from engine.data.images import DICOM_HEAD_BYTES, is_dicom_head

    try:
        with zf.open(info) as fh:
            return is_dicom_head(fh.read(DICOM_HEAD_BYTES))
    except Exception:
        return False


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


def check_zip(zf: zipfile.ZipFile, *, label: str, free_bytes: int | None = None, need_votes: bool = True) -> list:
    """Every reason to refuse this archive, as engine Problems (empty = safe to extract). `need_votes=False` for a
    zip of images only (the Predict page)."""
    from engine.errors import Problem

    image_ext = _image_extensions()
    problems = []
    members = [i for i in zf.infolist() if not _ignored(i)]
    for info in members:
        reason = _member_problem(info, image_ext, zf)
        if reason:
            problems.append(Problem(label, f"'{info.filename}' {reason}", "remove it from the zip and upload again"))
    files = [i for i in members if not i.is_dir()]
    if need_votes and not any(PurePosixPath(i.filename).name == "votes.csv" for i in files):
        problems.append(Problem(label, "no votes.csv in the zip", "put votes.csv next to the images, then zip the folder"))
    problems += _layout_problems(files, label)
    for info in files:
        if info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            problems.append(Problem(
                label, f"'{info.filename}' unpacks to {_size(info.file_size)} from {_size(info.compress_size)} "
                f"({info.file_size / max(info.compress_size, 1):.0f}x; more than {MAX_RATIO}x is refused as a likely "
                "zip bomb)", "remove it from the zip, or open the dataset folder by its path instead"))
    total = sum(i.file_size for i in files)
    if total > MAX_UNPACKED_BYTES:
        problems.append(Problem(label, f"unpacks to {_size(total)}; an upload may unpack to at most "
                                f"{_size(MAX_UNPACKED_BYTES)}", "open the dataset folder by its path instead"))
    elif free_bytes is not None and total > free_bytes:
        problems.append(Problem(label, f"unpacks to {total / 1e9:.1f} GB but only {free_bytes / 1e9:.1f} GB are free",
                                "free disk space or open the folder by its path instead"))
    return problems


def _layout_problems(files: list[zipfile.ZipInfo], label: str) -> list:
    """Names extraction cannot honour: a file listed twice, or a file whose name is also a folder of another."""
    from engine.errors import Problem

    counts = Counter(i.filename.replace("\\", "/") for i in files)
    folders = {str(parent) for n in counts for parent in PurePosixPath(n).parents if str(parent) != "."}
    out = []
    for name in sorted(n for n, k in counts.items() if k > 1):
        out.append(Problem(label, f"'{name}' is in the zip {counts[name]} times", "keep one copy and zip again"))
    for name in sorted(set(counts) & folders):
        out.append(Problem(label, f"'{name}' is both a file and a folder in the zip",
                           "rename the file or the folder and zip again"))
    return out


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def dataset_root(folder: Path) -> Path:
    """The folder holding votes.csv (the shallowest one), so a zip of the folder or of its contents both work."""
    found = sorted(folder.rglob("votes.csv"), key=lambda p: (len(p.parts), str(p)))
    return found[0].parent if found else folder


def extract_dataset_zip(data: bytes, name: str, datasets_dir: Path) -> Path:
    """Check, then extract an uploaded zip into datasets_dir/<name>-<hash>/; returns the dataset folder.

    Raises engine.errors.InputError listing every refused member. Re-uploading the same bytes reuses the folder.
    """
    label = name or "upload.zip"
    digest = hashlib.sha256(data).hexdigest()[:10]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(label).stem)[:40] or "dataset"
    target = Path(datasets_dir) / f"{stem}-{digest}"
    if (target / ".complete").exists():
        return dataset_root(target)
    with _open_checked(data, label, Path(datasets_dir), need_votes=True) as zf:
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _extract(zf, tmp.resolve(), label)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-extracted is left behind
            raise
        (tmp / ".complete").write_text(label, encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return dataset_root(target)


def _open_checked(data: bytes, label: str, folder: Path, *, need_votes: bool) -> zipfile.ZipFile:
    """The uploaded bytes as an open archive that `check_zip` found nothing to refuse in (else one InputError
    listing every problem). `folder` (created) is where it will be unpacked: its disk's free space is checked."""
    from engine.errors import InputError, Problem

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InputError(Problem(label, "is not a zip archive (or it is damaged)", "upload a .zip file")) from None
    folder.mkdir(parents=True, exist_ok=True)
    problems = check_zip(zf, label=label, free_bytes=shutil.disk_usage(folder).free, need_votes=need_votes)
    if problems:
        zf.close()
        raise InputError(problems)
    return zf


def extract_images_zip(data: bytes, name: str, target: Path) -> Path:
    """Check (as a dataset zip, but without votes.csv), then extract a zip of images into the new folder `target`.
    Raises engine.errors.InputError listing every refused member; nothing is left in `target` then."""
    label = name or "upload.zip"
    with _open_checked(data, label, Path(target), need_votes=False) as zf:
        try:
            _extract(zf, target.resolve(), label)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return target


def _extract(zf: zipfile.ZipFile, root: Path, label: str) -> None:
    """Write every checked member under `root`; a damaged member (bad CRC, a size header that lies, a truncated
    stream) is an InputError naming it."""
    import zlib

    from engine.errors import InputError, Problem

    for info in zf.infolist():
        if _ignored(info) or info.is_dir():
            continue
        dest = (root / info.filename.replace("\\", "/")).resolve()
        if not dest.is_relative_to(root):  # belt and braces after check_zip
            raise InputError(Problem(label, f"'{info.filename}' would be written outside the dataset folder"))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
            raise InputError(Problem(label, f"'{info.filename}' is damaged in the zip ({err})",
                                     "zip the dataset again and upload the new file")) from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise InputError(Problem(label, f"'{info.filename}' clashes with another member of the same name",
                                     "rename the file or the folder and zip again")) from None
