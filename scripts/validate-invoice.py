#!/usr/bin/env python3
"""Validates settled's invoice documents against the official rules (issue #19).

  validate-invoice.py ubl FILE    UBL 2.1 XSD (xmllint), then the EN 16931 (CEN) and the
                                  Peppol BIS Billing 3.0 schematron (SaxonC-HE): every fatal
                                  assertion fails the document, warnings are printed.
  validate-invoice.py cxml FILE   well-formed (xmllint), and valid against the cXML DTD when
                                  CXML_DTD names its InvoiceDetail.dtd (cXML's DTDs are not
                                  published on crates.io, npm, PyPI or Debian).

Needs scripts/install-invoice-validators.sh (run it first). Exit 0 when valid, 1 when not.
"""
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

TOOLS = pathlib.Path(__file__).resolve().parent.parent / "target" / "tools" / "invoice"
SVRL = "{http://purl.oclc.org/dsdl/svrl}"


def xmllint(*args):
    run = subprocess.run(["xmllint", "--noout", *args], capture_output=True, text=True)
    return run.returncode == 0, run.stderr.strip()


def schematron(path, xsl):
    # The venv's saxonche (installed by install-invoice-validators.sh).
    from saxonche import PySaxonProcessor

    with PySaxonProcessor(license=False) as proc:
        proc.set_configuration_property("http://saxon.sf.net/feature/allowedProtocols", "file")
        xslt = proc.new_xslt30_processor()
        executable = xslt.compile_stylesheet(stylesheet_file=str(TOOLS / "schematron" / xsl))
        report = executable.transform_to_string(source_file=str(path))
    fatal, warnings = [], []
    for failed in ET.fromstring(report).iter(SVRL + "failed-assert"):
        text = " ".join((failed.findtext(SVRL + "text") or "").split())
        line = f"{failed.get('id')} [{failed.get('flag')}] at {failed.get('location')}: {text}"
        (fatal if failed.get("flag") == "fatal" else warnings).append(line)
    return fatal, warnings


def ubl(path):
    ok, errors = xmllint("--schema", str(TOOLS / "ubl-2.1" / "maindoc" / "UBL-Invoice-2.1.xsd"), str(path))
    print(f"UBL 2.1 XSD: {'valid' if ok else 'INVALID'}")
    if not ok:
        print(errors)
    failures = 0 if ok else 1
    for xsl in ("CEN-EN16931-UBL.xsl", "PEPPOL-EN16931-UBL.xsl"):
        fatal, warnings = schematron(path, xsl)
        print(f"{xsl}: {len(fatal)} fatal, {len(warnings)} warnings")
        for line in fatal + warnings:
            print("  " + line)
        failures += len(fatal)
    return failures == 0


def cxml(path):
    ok, errors = xmllint(str(path))
    print(f"cXML well-formed: {'yes' if ok else 'NO'}")
    if not ok:
        print(errors)
        return False
    dtd = os.environ.get("CXML_DTD")
    if not dtd:
        print("cXML DTD: not checked (set CXML_DTD to InvoiceDetail.dtd)")
        return True
    ok, errors = xmllint("--dtdvalid", dtd, str(path))
    print(f"cXML DTD {dtd}: {'valid' if ok else 'INVALID'}")
    if not ok:
        print(errors)
    return ok


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("ubl", "cxml"):
        print(__doc__, file=sys.stderr)
        return 2
    if not (TOOLS / ".installed-v1").exists():
        print("run scripts/install-invoice-validators.sh first", file=sys.stderr)
        return 2
    venv = TOOLS / "venv" / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() != (TOOLS / "venv").resolve():
        os.execv(str(venv), [str(venv), *sys.argv])
    valid = (ubl if sys.argv[1] == "ubl" else cxml)(pathlib.Path(sys.argv[2]))
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
