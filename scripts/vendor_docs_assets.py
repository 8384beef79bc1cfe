"""Vendor the Swagger UI and ReDoc assets `/docs` and `/redoc` serve, from pinned npm packages.

    python scripts/vendor_docs_assets.py          # fetch, verify, write app/static/docs/
    python scripts/vendor_docs_assets.py --check  # verify the committed files against SHA256SUMS

Each package tarball is checked against the npm registry's published sha512 `integrity` pinned
below before anything is extracted; the files written are listed with their SHA-256 in
app/static/docs/SHA256SUMS, which the tests check too. To upgrade: change a version and its
integrity (`npm view PACKAGE@VERSION dist.integrity`), run the script, commit the result.
"""

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "app" / "static" / "docs"
REGISTRY = "https://registry.npmjs.org"

# package, version, dist.integrity, {file in the tarball: file written under TARGET}
PACKAGES = [
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
SUMS = TARGET / "SHA256SUMS"


def fetch(package: str, version: str, integrity: str) -> bytes:
    url = f"{REGISTRY}/{package}/-/{package}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data: bytes = response.read()
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{url}: {algorithm} is {actual}, pinned {expected}")
    return data


def vendor() -> None:
    sums = []
    for package, version, integrity, files in PACKAGES:
        with tarfile.open(fileobj=io.BytesIO(fetch(package, version, integrity))) as archive:
            for member, destination in files.items():
                extracted = archive.extractfile(member)
                if extracted is None:
                    raise SystemExit(f"{package}@{version}: {member} is not a file")
                content = extracted.read()
                path = TARGET / destination
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                sums.append(f"{hashlib.sha256(content).hexdigest()}  {destination}")
                print(f"{package}@{version} {member} -> {path}")
    SUMS.write_text("\n".join(sorted(sums, key=lambda line: line.split()[1])) + "\n")


def check() -> list[str]:
    """Files whose content differs from SHA256SUMS (or are missing)."""
    bad = []
    for line in SUMS.read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = TARGET / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        mismatched = check()
        if mismatched:
            raise SystemExit(f"vendored docs assets differ from SHA256SUMS: {mismatched}")
        print("vendored docs assets match SHA256SUMS")
    else:
        vendor()
