//! Regenerates `contracts/artifacts/` (or, with `--check`, fails when it is stale).
//!
//! * `artifacts/settled/*.json`: our own contracts, compiled from `contracts/sol/src` with
//!   foundry-compilers driving the solcjs shim `scripts/solc` (no native solc exists here).
//! * `artifacts/v07/*.json`, `artifacts/v08/*.json`: the ERC-4337 contracts we bind and deploy,
//!   taken verbatim (ABI and bytecode) from the pinned `@account-abstraction/contracts` npm
//!   artifacts, because the canonical EntryPoint addresses depend on that exact bytecode.
//!
//! Committing the results keeps a plain `cargo build` free of Node; CI runs `--check`.
//!
//! Usage: `cargo artifacts [--check]` (alias in `.cargo/config.toml`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    str::FromStr,
};

use foundry_compilers::{
    artifacts::{
        EvmVersion, Optimizer, Remapping, Settings, SolcInput, SolcLanguage, Source, Sources,
        output_selection::OutputSelection,
    },
    solc::Solc,
};
use serde_json::{Value, json};

/// The ERC-4337 artifacts settled binds, per npm alias (see package.json).
const AA_ARTIFACTS: &[(&str, &str, &[&str])] = &[
    (
        "v07",
        "account-abstraction-v07",
        &[
            "EntryPoint",
            "EntryPointSimulations",
            "IEntryPoint",
            "SimpleAccount",
            "SimpleAccountFactory",
        ],
    ),
    (
        "v08",
        "account-abstraction-v08",
        &[
            "EntryPoint",
            "EntryPointSimulations",
            "IEntryPoint",
            "SimpleAccount",
            "SimpleAccountFactory",
            "Simple7702Account",
        ],
    ),
];

const REMAPPINGS: &[&str] = &[
    "@openzeppelin/=node_modules/@openzeppelin/",
    "account-abstraction-v07/=node_modules/account-abstraction-v07/",
    "account-abstraction-v08/=node_modules/account-abstraction-v08/",
];

type Generated = BTreeMap<PathBuf, String>;
type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("settled-artifacts: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(check: bool) -> Result<bool, Error> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("contracts crate has no parent directory")?
        .to_path_buf();
    let out_dir = root.join("contracts/artifacts");

    let mut generated = Generated::new();
    // Production contracts, and contracts that only tests deploy (kept apart so no binding of the
    // contracts crate exposes them).
    compile_own(&root, "contracts/sol/src", "settled", &mut generated)?;
    compile_own(&root, "contracts/sol/testing", "testing", &mut generated)?;
    copy_account_abstraction(&root, &mut generated)?;

    let on_disk = list_json(&out_dir)?;
    if check {
        let mut fresh = true;
        for (rel, content) in &generated {
            match std::fs::read_to_string(out_dir.join(rel)) {
                Ok(existing) if existing == *content => {}
                Ok(_) => {
                    eprintln!("stale: contracts/artifacts/{}", rel.display());
                    fresh = false;
                }
                Err(_) => {
                    eprintln!("missing: contracts/artifacts/{}", rel.display());
                    fresh = false;
                }
            }
        }
        for rel in on_disk.iter().filter(|rel| !generated.contains_key(*rel)) {
            eprintln!("orphaned: contracts/artifacts/{}", rel.display());
            fresh = false;
        }
        if fresh {
            eprintln!("contracts/artifacts is up to date ({} files)", generated.len());
        } else {
            eprintln!("run `cargo artifacts` and commit the result");
        }
        return Ok(fresh);
    }

    for rel in on_disk.iter().filter(|rel| !generated.contains_key(*rel)) {
        std::fs::remove_file(out_dir.join(rel))?;
    }
    for (rel, content) in &generated {
        let path = out_dir.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, content)?;
    }
    eprintln!("wrote {} artifacts to contracts/artifacts", generated.len());
    Ok(true)
}

/// Compiles every `.sol` file under `src` (relative to the root) in one standard-JSON run into
/// `artifacts/<out>/`. Source unit names are relative to the repository root so the metadata
/// (and thus the bytecode) does not depend on where the repository is checked out. Contracts of
/// imported files are not written.
fn compile_own(root: &Path, src: &str, out: &str, generated: &mut Generated) -> Result<(), Error> {
    let mut solc = Solc::new(root.join("scripts/solc"))
        .map_err(|e| format!("scripts/solc: {e} (run scripts/install-toolchain.sh)"))?;
    solc.base_path = Some(root.to_path_buf());

    let src_dir = root.join(src);
    let mut sources = Sources::new();
    for file in sol_files(&src_dir)? {
        let rel = file.strip_prefix(root)?.to_path_buf();
        sources.insert(rel, Source::read(&file)?);
    }

    let mut settings = Settings::new(OutputSelection::common_output_selection([
        "abi".to_string(),
        "evm.bytecode.object".to_string(),
        "evm.deployedBytecode.object".to_string(),
    ]));
    settings.optimizer = Optimizer { enabled: Some(true), runs: Some(200), details: None };
    settings.evm_version = Some(EvmVersion::Cancun);
    settings.remappings =
        REMAPPINGS.iter().map(|r| Remapping::from_str(r)).collect::<Result<_, _>>()?;

    let input = SolcInput::new(SolcLanguage::Solidity, sources, settings);
    let output = solc.compile_exact(&input)?;
    if output.has_error() {
        for err in output.errors.iter().filter(|e| e.severity.is_error()) {
            eprintln!("{err}");
        }
        return Err("solc reported errors".into());
    }

    for (source, contracts) in output.contracts.iter() {
        for (name, contract) in contracts {
            let evm = contract.evm.as_ref().ok_or("solc returned no evm output")?;
            let code = |v: Option<Value>| -> String {
                v.and_then(|v| v.get("object").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default()
            };
            let bytecode = code(evm.bytecode.as_ref().map(serde_json::to_value).transpose()?);
            let deployed = code(
                evm.deployed_bytecode
                    .as_ref()
                    .and_then(|d| d.bytecode.as_ref())
                    .map(serde_json::to_value)
                    .transpose()?,
            );
            let artifact = json!({
                "contractName": name,
                "sourceName": source,
                "compiler": solc.version.to_string(),
                "abi": contract.abi,
                "bytecode": hex_prefixed(&bytecode),
                "deployedBytecode": hex_prefixed(&deployed),
            });
            generated.insert(PathBuf::from(out).join(format!("{name}.json")), pretty(&artifact)?);
        }
    }
    Ok(())
}

/// Copies the ABI and bytecode of the ERC-4337 contracts from the pinned npm packages.
fn copy_account_abstraction(root: &Path, generated: &mut Generated) -> Result<(), Error> {
    for (dir, package, names) in AA_ARTIFACTS {
        let package_dir = root.join("node_modules").join(package);
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(package_dir.join("package.json"))
                .map_err(|e| format!("{package}: {e} (run scripts/install-toolchain.sh)"))?,
        )?;
        let version = manifest["version"].as_str().unwrap_or("unknown");
        for name in *names {
            let source: Value = serde_json::from_str(&std::fs::read_to_string(
                package_dir.join("artifacts").join(format!("{name}.json")),
            )?)?;
            let mut abi = source["abi"].clone();
            flatten_struct_namespaces(&mut abi, name)?;
            let artifact = json!({
                "contractName": source["contractName"],
                "sourceName": source["sourceName"],
                "package": format!("@account-abstraction/contracts@{version}"),
                "abi": abi,
                "bytecode": source["bytecode"],
                "deployedBytecode": source["deployedBytecode"],
            });
            generated.insert(PathBuf::from(dir).join(format!("{name}.json")), pretty(&artifact)?);
        }
    }
    Ok(())
}

/// Rewrites every `internalType: "struct N.S"` to `"struct S"`, so each binding has all of its
/// structs at the top of its module.
///
/// alloy's `sol!` turns each struct namespace of a JSON ABI into its own interface, where a
/// struct referring to a top-level one (`IEntryPoint.UserOpsPerAggregator` holds
/// `PackedUserOperation[]`) no longer resolves. `internalType` is informational only (not part
/// of any selector or encoding), so flattening changes no behaviour; two different structs
/// that would flatten to one name are an error.
fn flatten_struct_namespaces(abi: &mut Value, contract: &str) -> Result<(), Error> {
    fn walk(value: &mut Value, seen: &mut BTreeMap<String, String>) -> Result<(), Error> {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(ty)) = map.get_mut("internalType")
                    && let Some(qualified) = ty.strip_prefix("struct ")
                    && let Some((_, name)) = qualified.split_once('.')
                {
                    let name = name.to_owned();
                    let base = name.split('[').next().unwrap_or(&name).to_owned();
                    let full = qualified.split('[').next().unwrap_or(qualified).to_owned();
                    if let Some(previous) = seen.insert(base.clone(), full.clone())
                        && previous != full
                    {
                        return Err(format!(
                            "structs {previous} and {full} both flatten to {base}"
                        )
                        .into());
                    }
                    *ty = format!("struct {name}");
                }
                map.values_mut().try_for_each(|v| walk(v, seen))
            }
            Value::Array(items) => items.iter_mut().try_for_each(|v| walk(v, seen)),
            _ => Ok(()),
        }
    }
    walk(abi, &mut BTreeMap::new()).map_err(|e| format!("{contract}: {e}").into())
}

fn sol_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(sol_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "sol") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every `*.json` below `dir`, relative to it.
fn list_json(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        if !dir.exists() {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path.strip_prefix(base)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn hex_prefixed(code: &str) -> String {
    if code.starts_with("0x") { code.to_owned() } else { format!("0x{code}") }
}

fn pretty(value: &Value) -> Result<String, Error> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}
