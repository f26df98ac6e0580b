"""Fetching the mini profile's registry packages into the cache, without a system install.

Debian packages come through ``apt-get download`` and are unpacked with ``dpkg-deb -x``; the OpenMoji
package through ``npm pack`` and ``tarfile``. Everything lands in ``<cache>/downloads`` and
``<cache>/unpacked/<name>``; an unpacked tree appears only when complete (unpack to a temporary folder,
then rename), so an interrupted fetch is simply redone. A package that cannot be fetched is a one-line
:class:`TinyCLIPError`, never a silently smaller data set.
"""
from __future__ import annotations

import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyCLIPError


@dataclass(frozen=True)
class Package:
    name: str
    version: str          # the version the project was built against; the registry's candidate is the fallback
    registry: str         # "apt" | "npm"
    licence: str


PACKAGES = {
    "tuxpaint-stamps-default": Package("tuxpaint-stamps-default", "2022.06.04-1", "apt", "GPL-2.0"),
    "fonts-noto-color-emoji": Package("fonts-noto-color-emoji", "2.042-0+deb12u1", "apt",
                                      "OFL-1.1 (font), Apache-2.0 (emoji images)"),
    "dataset-fashion-mnist": Package("dataset-fashion-mnist", "0.0~git20200523.55506a9-1", "apt", "MIT"),
    "openclipart-svg": Package("openclipart-svg", "1:0.18+dfsg-19", "apt", "public domain (CC0 dedication)"),
    "openmoji": Package("openmoji", "17.0.0", "npm", "CC-BY-SA-4.0"),
}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise TinyCLIPError(f"`{cmd[0]}` is not installed; the mini data set is fetched with apt-get, dpkg-deb "
                            f"and npm (use --profile smoke where they are unavailable)") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "npm error", "npm ERR"))]
    return (errors or lines or ["no output"])[-1]


def _find_download(downloads: Path, pkg: Package) -> Path | None:
    pattern = f"{pkg.name}_*.deb" if pkg.registry == "apt" else f"{pkg.name}-*.tgz"
    found = sorted(downloads.glob(pattern))
    return found[-1] if found else None


def download(pkg: Package, downloads: Path) -> Path:
    """The package's .deb/.tgz in ``downloads`` (fetched unless already there)."""
    downloads.mkdir(parents=True, exist_ok=True)
    have = _find_download(downloads, pkg)
    if have is not None:
        return have
    if pkg.registry == "apt":
        # Pinned first; then (after refreshing the lists) the pinned version, then the current candidate,
        # because a Debian point release can replace a version in the archive.
        attempts = [(False, f"{pkg.name}={pkg.version}"), (True, f"{pkg.name}={pkg.version}"), (False, pkg.name)]
        proc = None
        for update_first, spec in attempts:
            if update_first:
                _run(["apt-get", "update", "-qq"], downloads)
            proc = _run(["apt-get", "download", "-q", spec], downloads)
            if proc.returncode == 0:
                break
    else:
        proc = _run(["npm", "pack", "--silent", f"{pkg.name}@{pkg.version}"], downloads)
    have = _find_download(downloads, pkg)
    if proc.returncode != 0 or have is None:
        raise TinyCLIPError(f"could not fetch {pkg.registry} package {pkg.name} ({_last_line(proc)}); "
                            f"check access to the package registry, or build --profile smoke")
    return have


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a .deb (dpkg-deb -x, no install) or an npm .tgz into ``dest`` atomically."""
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.suffix == ".deb":
        proc = _run(["dpkg-deb", "-x", str(archive), str(tmp)], tmp)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            archive.unlink(missing_ok=True)   # most likely a truncated download: fetch again next time
            raise TinyCLIPError(f"could not unpack {archive.name} ({_last_line(proc)}); it was removed, run the "
                                f"build again to re-download it")
    else:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            archive.unlink(missing_ok=True)
            raise TinyCLIPError(f"could not unpack {archive.name} ({exc}); it was removed, run the build again "
                                f"to re-download it") from None
    tmp.rename(dest)
    return dest


def deb_version(archive: Path) -> str:
    """The version recorded inside a fetched package (what the data card reports)."""
    if archive.suffix == ".deb":
        proc = _run(["dpkg-deb", "-f", str(archive), "Version"], archive.parent)
        return proc.stdout.strip() or "unknown"
    return archive.stem.rsplit("-", 1)[-1]


def fetch(name: str, cache: Path) -> tuple[Path, str]:
    """Fetch and unpack one package; returns (unpacked tree, version)."""
    pkg = PACKAGES[name]
    archive = download(pkg, cache / "downloads")
    return unpack(archive, cache / "unpacked" / name), deb_version(archive)
