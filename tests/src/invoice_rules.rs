//! The official rules invoice documents are checked against (UBL 2.1 XSD, EN 16931 and Peppol
//! BIS Billing 3.0 schematron; cXML well-formedness, and its DTD when `CXML_DTD` names one),
//! run through `scripts/validate-invoice.py` after `scripts/install-invoice-validators.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestResult;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Validates `file` as `format` (`ubl` or `cxml`): the validator's report, or an error with it
/// when the document breaks a rule.
pub fn validate_invoice(format: &str, file: &Path) -> TestResult<String> {
    let install = Command::new(root().join("scripts/install-invoice-validators.sh")).output()?;
    if !install.status.success() {
        return Err(format!(
            "install-invoice-validators.sh failed: {}",
            String::from_utf8_lossy(&install.stderr)
        )
        .into());
    }
    let run = Command::new("python3")
        .arg(root().join("scripts/validate-invoice.py"))
        .arg(format)
        .arg(file)
        .output()?;
    let report =
        format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    if !run.status.success() {
        return Err(format!("{} is not a valid {format} invoice:\n{report}", file.display()).into());
    }
    Ok(report)
}
