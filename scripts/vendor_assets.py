"""Vendor the browser assets the service serves, and those its browser tests use, from pinned
npm packages: Swagger UI and ReDoc (`/docs`, `/redoc`), uPlot (the web app's charts), axe-core
(the accessibility checks of the browser tests).

    python scripts/vendor_assets.py          # fetch with `npm pack`, verify, write the files
    python scripts/vendor_assets.py --check  # verify the committed files against SHA256SUMS

Each package tarball is checked against its published sha512 `integrity`, pinned below, before
anything is extracted; the files written are listed with their SHA-256 in a SHA256SUMS beside
them, which the tests check too. To upgrade: change a version and its integrity
(`npm view PACKAGE@VERSION dist.integrity`), run the script, commit the result.
"""

import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Per directory: package, version, dist.integrity, {file in the tarball: file written there}
TARGETS: dict[str, list[tuple[str, str, str, dict[str, str]]]] = {}
TARGETS["app/static/docs"] = [
    (
        "swagger-ui-dist",
        "5.36.0",
        "sha512-Lt6/Kb0gXmLdiabLhvso4VdJP9V7qJWB0zh0gzeXUV3+CMOTzMmvpJRSXN7EAjfwixwmoi9ezDbLHiexC7lA9A==",
        {
            "package/swagger-ui-bundle.js": "swagger-ui/swagger-ui-bundle.js",
            "package/swagger-ui.css": "swagger-ui/swagger-ui.css",
            "package/favicon-32x32.png": "swagger-ui/favicon-32x32.png",
            "package/LICENSE": "swagger-ui/LICENSE",
        },
    ),
    (
        # 2.x: a classic script defining <redoc>; 3.x ships an ES module only.
        "redoc",
        "2.5.4",
        "sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ==",
        {
            "package/bundles/redoc.standalone.js": "redoc/redoc.standalone.js",
            "package/bundles/redoc.standalone.js.LICENSE.txt": "redoc/LICENSE.txt",
        },
    ),
]
TARGETS["app/static/vendor"] = [
    (
        "uplot",
        "1.6.32",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        {
            "package/dist/uPlot.iife.min.js": "uplot/uPlot.iife.min.js",
            "package/dist/uPlot.min.css": "uplot/uPlot.min.css",
            "package/LICENSE": "uplot/LICENSE",
        },
    ),
]
TARGETS["tests/browser/vendor"] = [
    (
        "axe-core",
        "4.14.1",
        "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==",
        {"package/axe.min.js": "axe-core/axe.min.js", "package/LICENSE": "axe-core/LICENSE"},
    ),
]


def fetch(package: str, version: str, integrity: str) -> bytes:
    """The package's tarball, by npm's own client, checked against its pinned integrity."""
    with tempfile.TemporaryDirectory() as directory:
        done = subprocess.run(
            ["npm", "pack", f"{package}@{version}", "--pack-destination", directory, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise SystemExit(f"npm pack {package}@{version}: {done.stderr.strip()}")
        (tarball,) = Path(directory).glob("*.tgz")
        data = tarball.read_bytes()
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{package}@{version}: {algorithm} is {actual}, pinned {expected}")
    return data


def vendor(target: str) -> None:
    sums = []
    for package, version, integrity, files in TARGETS[target]:
        with tarfile.open(fileobj=io.BytesIO(fetch(package, version, integrity))) as archive:
            for member, destination in files.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise SystemExit(f"{package}@{version}: {member} is not a file")
                content = extracted.read()
                path = REPO / target / destination
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                sums.append(f"{hashlib.sha256(content).hexdigest()}  {destination}")
                print(f"{package}@{version} {member} -> {path}")
    sums_file = REPO / target / "SHA256SUMS"
    sums_file.write_text("\n".join(sorted(sums, key=lambda line: line.split()[1])) + "\n")


def check(target: str) -> list[str]:
    """Files under `target` whose content differs from its SHA256SUMS (or are missing)."""
    bad = []
    for line in (REPO / target / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = REPO / target / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(f"{target}/{name}")
    return bad


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        mismatched = [name for target in TARGETS for name in check(target)]
        if mismatched:
            raise SystemExit(f"vendored assets differ from SHA256SUMS: {mismatched}")
        print("vendored assets match SHA256SUMS")
    else:
        for target in TARGETS:
            vendor(target)
